"""JSON bodies that round-trip: checked once per request before any view (or the Idempotency-Key
fingerprint) reads them.

Python's `json` accepts what JSON does not: `NaN`, `Infinity`, numbers too large for a float (they
become inf), and `\\ud800`-style escapes that decode to a lone surrogate, which no UTF-8 encoder can
write back (a document id or text with one failed deep in the stack with a 500; NaN in metadata was
stored and later answered in a search body that was not JSON). Such input is refused with 422. A body
nested so deep that the parser runs out of stack is refused with 400 instead of crashing the request.
Syntax errors are left to the view's body parser, which answers 400 in the usual shape.

A body sent without a length (`Transfer-Encoding: chunked`) is read by werkzeug only up to
MAX_CONTENT_LENGTH and then silently cut off there, so an oversized body became truncated JSON and a
400. Such a body is read first, here, and answered 413 when the client sent more than the limit.
"""

from __future__ import annotations

import json
import math

from flask import Flask, request
from flask_smorest import abort
from werkzeug.exceptions import RequestEntityTooLarge

SURROGATE_ESCAPES = (b"\\ud", b"\\uD")


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str):
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"{text[:40]} is too large for a number")
    return value


def _lone_surrogate(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_streamed_length() -> None:
    """413 for a body without Content-Length that goes past the limit (werkzeug stops reading at the
    limit without saying so)."""
    limit = request.max_content_length
    if limit is None or request.content_length is not None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if len(request.get_data(cache=True)) < limit:
        return
    # Exactly `limit` bytes were read: one more byte from the server's stream tells a body of exactly
    # the limit (allowed) from a longer one.
    try:
        more = request.environ["wsgi.input"].read(1)
    except (OSError, ValueError):
        more = b""
    if more:
        raise RequestEntityTooLarge()


def check_json_body() -> None:
    """The before_request hook: 422 for NaN/Infinity/overflowing numbers and lone surrogates, 400 for
    nesting too deep to parse; other bodies pass untouched."""
    check_streamed_length()
    if not request.is_json:
        return
    raw = request.get_data(cache=True)
    if not raw:
        return
    try:
        value = loads(raw)
    except _NotJSON as exc:
        abort(422, code="invalid", message=f"the body is not valid JSON: {exc} (NaN and Infinity are not JSON)")
    except RecursionError:
        abort(400, code="bad_request", message="the body is not valid JSON: it is nested too deeply")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # malformed: the view's body parser answers 400
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        abort(400, code="bad_request", message=f"the body is not valid JSON: {str(exc)[:200]}")
    if lone_surrogate_in(raw, value):
        abort(422, code="invalid", message="the body holds a string with a lone UTF-16 surrogate (such as "
                                           "\\ud800), which is not valid Unicode text")


def loads(raw: bytes | str):
    """The body's value; ValueError (a subclass for NaN/Infinity and overflowing numbers, which JSON does
    not have) or RecursionError when it is not JSON that round-trips."""
    return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)


def lone_surrogate_in(raw: bytes, value) -> bool:
    """Whether `value`, parsed from `raw`, holds a string with a lone surrogate (only an escape makes one)."""
    return any(escape in raw for escape in SURROGATE_ESCAPES) and _lone_surrogate(value)


def init_app(app: Flask) -> None:
    app.before_request(check_json_body)
