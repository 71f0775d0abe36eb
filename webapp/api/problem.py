"""The body of every error answer: an RFC 9457 problem document (type, title, status, detail) that also
carries Swapline's own members (code, message, errors, extras such as job_id). Plain Python, so the
gunicorn master can write the same shape for the errors it answers before the app sees a request."""

from __future__ import annotations

import http

PROBLEM_JSON = "application/problem+json"
# Problem types are named after the machine-readable code; not a URL, so nothing pretends to resolve.
PROBLEM_TYPE_PREFIX = "urn:swapline:problem:"
RESERVED = frozenset({"type", "title", "status", "detail"})


def title(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, code: str, message: str, **members) -> dict:
    """RFC 9457 members first, then Swapline's; `message` repeats `detail` for older clients."""
    extras = {k: v for k, v in members.items() if k not in RESERVED}
    return {"type": PROBLEM_TYPE_PREFIX + code, "title": title(status), "status": status, "detail": message,
            "code": code, "message": message, **extras}
