"""Server-Timing `app` (webapp/api/apptiming.py): added to every answer, beside a route's own entries,
and it covers the route's time (tests/test_observability.py checks it on a real search)."""

from __future__ import annotations

import re
import time

from flask import Flask, Response, abort

from webapp.api import apptiming


def _timing(header: str) -> dict[str, float]:
    return {name.strip(): float(dur) for name, dur in (part.split(";dur=") for part in header.split(","))}


def test_every_answer_says_how_long_the_app_held_it():
    app = Flask(__name__)

    @app.get("/slow")
    def slow():
        time.sleep(0.02)
        return Response("ok", headers={"Server-Timing": "embed;dur=1.50, search;dur=2.25"})

    @app.get("/plain")
    def plain():
        return "ok"

    @app.get("/refused")
    def refused():
        abort(404)

    apptiming.init_app(app)
    client = app.test_client()
    slow_answer = client.get("/slow")
    timing = _timing(slow_answer.headers["Server-Timing"])
    assert list(timing) == ["embed", "search", "app"] and timing["embed"] == 1.5 and timing["search"] == 2.25
    assert timing["app"] >= 20.0  # the route's sleep is inside it
    assert len(slow_answer.headers.getlist("Server-Timing")) == 1
    for path in ("/plain", "/refused"):
        assert re.fullmatch(r"app;dur=\d+\.\d\d", client.get(path).headers["Server-Timing"])
