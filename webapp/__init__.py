"""Swapline's programs on the web side, one subpackage each:

- `webapp.api`: the HTTP API (Flask + flask-smorest), served by gunicorn: `gunicorn "webapp:create_app()"`;
- `webapp.cli`: the `swapline` command, a light client of the REST API;
- `webapp.devstack`: what `make run` starts (Redis, workers, beat, API, Flower, the sample corpus).

Importing `webapp` loads nothing heavy: `create_app` imports the API only when called, so the CLI
starts without Flask, Celery, FAISS or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from shared.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """The API's app factory (see `webapp.api.app.create_app`)."""
    from webapp.api.app import create_app as create_api_app

    return create_api_app(settings)
