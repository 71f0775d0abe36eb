"""Logging for every Swapline process (API, workers, beat), set up once from settings.

`SWAPLINE_LOG_FORMAT=text` (the default) prints `time level logger message` lines whose messages are
`key=value`; `json` prints one JSON object per line (python-json-logger) with `time` (ISO 8601, UTC), `level`,
`logger`, `message`, `process`, `event` (the message's leading `event=` value), the traceback as
`exc_info` when there is one, and what this thread is working on: `request_id` (API requests), and
`job_id` and `collection` (API requests about them, and tasks on workers).

The context lives in a contextvar: the API binds it per request, the worker per task, so code that
logs needs to pass nothing along.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from shared.settings import LOG_FORMATS

# The Celery message header that carries the request id of the API request that enqueued a job.
REQUEST_ID_HEADER = "swapline_request_id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(message)s"
JSON_RENAMES = {"levelname": "level", "name": "logger"}
EVENT = re.compile(r"event=(\S+)")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("swapline_log_context", default=None)


def bind(**fields: str | None) -> contextvars.Token:
    """Add fields to this thread's log context until `unbind(token)`."""
    return _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v}})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current(field: str) -> str | None:
    return (_context.get() or {}).get(field)


class ContextFilter(logging.Filter):
    """Copies the log context (and the message's event name) onto each record passing a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if not hasattr(record, "event") and isinstance(record.msg, str):
            match = EVENT.match(record.msg)
            if match:
                record.event = match.group(1)
        return True


def dict_config(log_format: str, level: str | int = "INFO") -> dict:
    """A `logging.config.dictConfig` for the root logger, gunicorn's loggers included (its access log
    stays off: per-route latency is in /metrics)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    formatter = {"format": TEXT_FORMAT} if log_format == "text" else {
        "()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS, "rename_fields": JSON_RENAMES,
        "timestamp": "time"}  # ISO 8601, UTC
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"swapline": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "swapline", "filters": ["context"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            # FAISS logs each CPU-specific build it tries and cannot import (avx512, avx2) at INFO,
            # tracebacks included, before falling back: noise in every process's start.
            "faiss.loader": {"level": "WARNING"},
        },
    }


def configure_logging(log_format: str, level: str | int = "INFO") -> None:
    """Send every logger's records through one handler in `log_format`, warnings too; in JSON, also the
    traceback of an exception that ends the process (Python would print it as plain lines)."""
    logging.config.dictConfig(dict_config(log_format, level))
    logging.captureWarnings(True)
    if log_format == "json":
        sys.excepthook = _log_uncaught


def _log_uncaught(kind, value, tb) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("swapline").critical("event=process.uncaught error=%r", str(value), exc_info=(kind, value, tb))
