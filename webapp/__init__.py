"""The HTTP edge of Swapline: `webapp.create_app(settings=None)`, served by gunicorn in production:
`gunicorn "webapp:create_app()"`."""

from __future__ import annotations

import logging

from flask import Flask

from shared.settings import Settings, load_settings
from webapp import auth
from webapp.extensions import Api, swapline
from webapp.metrics import Metrics


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = Flask(__name__)
    app.config.update(
        API_TITLE="Swapline",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        SWAPLINE_SETTINGS=settings,
    )
    api = Api(app)
    swapline.init_app(app, settings)
    auth.init_app(app, settings)
    Metrics().init_app(app, app.extensions["swapline"])

    from webapp.routes import admin, collections, events, health, jobs, search, versions

    for module in (health, collections, jobs, search, versions, events):
        api.register_blueprint(module.blp)
    app.register_blueprint(admin.blp)  # HTML, not part of the OpenAPI document
    swapline.start(app)
    return app
