"""The workers' Celery app: `celery -A workers.celery_app worker -Q ingest,index,webhooks`.

Configuration is added lazily (Celery evaluates `add_defaults` callables on first use), so importing
this module reads no environment; the settings come from `shared.settings.load_settings()` once per
process, and the same `celery_config()` configures the API's sender and Flower.
"""

from __future__ import annotations

import os
from functools import cache

from celery import Celery

from shared.celeryconfig import celery_config, enqueue
from shared.services import Services, build_services
from shared.settings import Settings, load_settings

app = Celery("swapline", include=["workers.tasks"])


@cache
def settings() -> Settings:
    return load_settings()


app.add_defaults(lambda: celery_config(settings()))

_services: dict[int, Services] = {}


def services() -> Services:
    """This process's services, built on first use after the fork (a Redis connection must not be
    shared between pool processes; the embedding model loads lazily on first embed)."""
    pid = os.getpid()
    if pid not in _services:
        _services.clear()
        s = settings()
        _services[pid] = build_services(s, lambda kind, job_id: enqueue(app, kind, job_id),
                                        torch_threads=s.worker_torch_threads)
    return _services[pid]
