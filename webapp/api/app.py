"""The API's app factory: `create_app(settings=None)`, served by gunicorn as `webapp:create_app()`."""

from __future__ import annotations

from flask import Flask

from shared.logs import configure_logging
from shared.settings import Settings, load_settings
from webapp.api import apptiming, auth, jsonbody, requestid, searchlane
from webapp.api.errors import Api
from webapp.api.metrics import Metrics
from webapp.api.routes import (
    admin,
    collections,
    events,
    health,
    jobs,
    quality,
    recovery,
    search,
    snapshots,
    sources,
    versions,
    webhooks,
)
from webapp.api.runtime import swapline

API_BLUEPRINTS = (health, collections, sources, jobs, search, versions, events, webhooks, snapshots, recovery,
                  quality)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging(settings.log_format)
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
    requestid.init_app(app)  # first, so every answer (errors from auth included) carries X-Request-ID
    api = Api(app)
    swapline.init_app(app, settings)
    auth.init_app(app, settings)
    jsonbody.init_app(app)  # after auth: a request without a key gets 401 before its body is read
    Metrics().init_app(app, swapline.runtime_of(app))
    for module in API_BLUEPRINTS:
        api.register_blueprint(module.blp)
    app.register_blueprint(admin.blp)  # HTML, not part of the OpenAPI document
    searchlane.init_app(app)  # plain searches answered beside Flask's request machinery
    apptiming.init_app(app)  # around everything above: Server-Timing `app`
    swapline.start(app)
    return app
