"""Server-Timing `app`: how long the application held each request, from the moment the server handed it
over to the moment the answer's status and headers were ready (every hook, the route, the body's
serialization), in milliseconds. A search answer's `embed` and `search` are parts of it; what a client
measures beyond `app` is the HTTP server, the network and the client itself (tests/bench/latency.py
reports the split).

Measured around Flask's WSGI callable, so nothing the app does escapes it; the header is added when the
answer's headers are sent (beside the route's own Server-Timing entries, where it has any)."""

from __future__ import annotations

import time

from flask import Flask

HEADER = "Server-Timing"


def init_app(app: Flask) -> None:
    inner = app.wsgi_app

    def timed(environ, start_response):
        started = time.perf_counter()

        def stamped(status, headers, exc_info=None):
            entry = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
            for i, (name, value) in enumerate(headers):
                if name.lower() == HEADER.lower():
                    headers[i] = (name, f"{value}, {entry}")
                    break
            else:
                headers.append((HEADER, entry))
            return start_response(status, headers, exc_info)

        return inner(environ, stamped)

    app.wsgi_app = timed  # type: ignore[method-assign]
