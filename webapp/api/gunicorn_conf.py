"""gunicorn's settings for the API, the one place they are written. The Dockerfile, docker-compose.yml,
`make run` and the tests all start the API as

    gunicorn -c python:webapp.api.gunicorn_conf --bind HOST:PORT --workers N "webapp:create_app()"

Flags given on the command line override what is set here.

Metrics: with several workers, each process observes its own requests. Unless PROMETHEUS_MULTIPROC_DIR
is set already, the master creates an empty folder for prometheus_client's multiprocess mode before it
forks workers, so /metrics on any worker reports all of them (see webapp/api/metrics.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from shared.logs import dict_config
from shared.settings import LOG_FORMATS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What `-c` takes to load this file as a module (no path to resolve, wherever gunicorn starts).
CONFIG_ARG = "python:webapp.api.gunicorn_conf"

bind = "127.0.0.1:8000"
workers = 1
# Threads per worker: a search waiting on the embedder does not hold up the others.
worker_class = "gthread"
threads = 8
# A request (a search, a staged batch) never takes this long; a worker stuck past it is replaced.
timeout = 120
# On SIGTERM, requests in flight (and open event streams, which end on their own) get this long.
graceful_timeout = 10
keepalive = 5
# Log to stderr; the access log is off (per-route latency is in /metrics).
errorlog = "-"
loglevel = "info"
# gunicorn's own lines ("Booting worker") in the same format as the app's (SWAPLINE_LOG_FORMAT). A
# config file is read when gunicorn starts; a wrong value is left to create_app, which says why.
_log_format = os.environ.get("SWAPLINE_LOG_FORMAT") or "text"
logconfig_dict = dict_config(_log_format if _log_format in LOG_FORMATS else "text")

_created_metrics_dir: str | None = None


def on_starting(server) -> None:
    global _created_metrics_dir
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        for name in os.listdir(existing):  # files of a previous run would be summed in
            if name.endswith(".db"):
                os.unlink(os.path.join(existing, name))
        return
    _created_metrics_dir = tempfile.mkdtemp(prefix="swapline-metrics-")
    os.environ[MULTIPROC_ENV] = _created_metrics_dir


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _created_metrics_dir:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
