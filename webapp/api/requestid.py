"""X-Request-ID: every answer carries one, the client's when it sent a usable one, else a new one;
the request's log lines (and the jobs it enqueues, on the workers) carry it as `request_id`."""

from __future__ import annotations

import re
import uuid

from flask import Flask, g, request

from shared import logs

HEADER = "X-Request-ID"
# What we take from a client: short, printable, no spaces (it ends up in logs and headers).
ACCEPTED = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")


def init_app(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_stamp)
    app.teardown_request(_end)


def current() -> str:
    if "request_id" not in g:
        g.request_id = of_request(request.headers.get(HEADER, ""))
    return g.request_id


def of_request(sent: str) -> str:
    """The request's id: the one the client sent (`sent`, the header's value) when usable, else a new one."""
    return sent if ACCEPTED.match(sent) else uuid.uuid4().hex


def _begin() -> None:
    view_args = request.view_args or {}
    g.log_token = logs.bind(request_id=current(), collection=view_args.get("name"), job_id=view_args.get("job_id"))


def _stamp(response):
    response.headers[HEADER] = current()
    return response


def _end(_exc=None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        logs.unbind(token)
