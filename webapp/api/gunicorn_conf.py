"""gunicorn's settings for the API, the one place they are written. The Dockerfile, docker-compose.yml,
`make run` and the tests all start the API as

    gunicorn -c python:webapp.api.gunicorn_conf --bind HOST:PORT --workers N "webapp:create_app()"

Flags given on the command line override what is set here.

Threads: `threads` (here or `--threads`) is the number of request threads of a worker process; at
start the master adds one thread per event-stream slot (SWAPLINE_SSE_MAX_STREAMS). A stream holds its
thread for as long as it is open, and the API admits at most that many streams, so by construction
open streams can never take the threads searches and job submissions run on.

Errors gunicorn answers itself (a request line or header over its limits, a malformed request) are
written in the API's one JSON error shape instead of gunicorn's HTML page.

Metrics: with several workers, each process observes its own requests. Unless PROMETHEUS_MULTIPROC_DIR
is set already, the master creates an empty folder for prometheus_client's multiprocess mode before it
forks workers, so /metrics on any worker reports all of them (see webapp/api/metrics.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile

from gunicorn import glogging, util

from shared.logs import dict_config
from shared.settings import LOG_FORMATS
from webapp.api.problem import PROBLEM_JSON, problem_body

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What `-c` takes to load this file as a module (no path to resolve, wherever gunicorn starts).
CONFIG_ARG = "python:webapp.api.gunicorn_conf"

bind = "127.0.0.1:8000"
# Worker processes and request threads, sized by tests/bench/concurrency.py (README "Benchmarks"): on
# 2 vCPUs, run alone, 2 workers (x 4 or x 8 threads) served 1.32x to 1.53x the searches/s of 1 x 8 at
# 16 clients on three CPUs (Xeon with AMX, Xeon Ice Lake, EPYC Zen 3), about as fast at 1 client: a request's
# Python work (HTTP, Flask, the answer) holds its process's GIL, so one process cannot keep both cores
# embedding. Each worker holds its own model and its own anonymous memory; index files are mapped, so
# their pages are shared. A search waiting on the embedder does not hold up the other threads. Event
# streams get threads of their own on top (see on_starting).
workers = 2
# gunicorn's threaded worker, a request thread staying on a keep-alive connection whose next request
# follows at once (webapp/api/gworker.py).
worker_class = "webapp.api.gworker.KeepAliveThreadWorker"
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


class Logger(glogging.Logger):
    """gunicorn's logger, with an access log only when one is asked for (`--access-logfile`).

    Given any logging config (`logconfig_dict` above, for the format), gunicorn builds every request's
    access line (its atoms: the date, the headers), and that config's `gunicorn.access` logger, off,
    drops it: 1% of a search's samples in py-spy (tests/bench/profile_search.py). Here no line is built
    without an access log, and one asked for is written (the config alone would turn it off)."""

    def setup(self, cfg):
        super().setup(cfg)
        if cfg.accesslog is not None:
            self.access_log.setLevel(logging.INFO)
            self._set_handler(self.access_log, cfg.accesslog, fmt=logging.Formatter(self.access_fmt),
                              stream=sys.stdout)

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog is not None:
            super().access(resp, req, environ, request_time)


logger_class = Logger

_created_metrics_dir: str | None = None


# The codes of the API's error shape (webapp/api/problem.py) for the answers gunicorn writes itself.
GUNICORN_ERROR_CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
                        431: "header_fields_too_large", 500: "internal_error", 501: "not_implemented"}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, answering the API's problem document instead of an HTML page."""
    message = f"{reason}: {mesg}" if mesg else reason
    code = GUNICORN_ERROR_CODES.get(status_int, "error")
    body = json.dumps(problem_body(status_int, code, message[:500])).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def on_starting(server) -> None:
    from shared.settings import load_settings
    from webapp.api.exposure import refuse_open_exposure

    refuse_open_exposure(load_settings(), [str(b) for b in server.cfg.bind])
    # gunicorn writes the errors it answers before the app sees a request (over-long request lines and
    # headers, malformed requests) through this one function; workers fork from here and inherit it.
    util.write_error = write_json_error
    _add_stream_threads(server)
    _metrics_dir()


def on_reload(server) -> None:
    _add_stream_threads(server)  # a reload (SIGHUP) reads this file again, threads included


def _add_stream_threads(server) -> None:
    from shared.settings import load_settings

    request_threads = server.cfg.threads
    streams = load_settings().sse_max_streams
    server.cfg.set("threads", request_threads + streams)
    server.log.info("event=gunicorn.threads request_threads=%s stream_threads=%s", request_threads, streams)


def _metrics_dir() -> None:
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
