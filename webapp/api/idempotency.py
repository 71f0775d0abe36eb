"""Idempotency-Key for job-creating requests.

A client that may retry (a timeout, a dropped connection) sends `Idempotency-Key: <unique string>`.
The first request with a key on a route claims it in Redis with one `SET NX` of a pending record
holding a fingerprint of the request (method, path, body, the caller's key id); only the request that
wins the claim runs the view. When the view accepts the work (a status below 400) its status, body and
headers are stored for `idempotency_ttl_seconds` (24 h by default), and a repeat

- with the same fingerprint gets that response again, byte for byte, with `Idempotent-Replayed: true`
  (so the same job id: no job is ever created twice for one key);
- with a different body gets 422 (`idempotency_key_reused`);
- while the first is still being accepted gets 409 (`idempotency_in_progress`) with `Retry-After`.

A refusal (4xx, 5xx, a full queue) is not stored: the claim is released so the client can retry with
the same key once the cause is fixed. A pending claim expires should the process die mid-request
(`shared.services.IDEMPOTENCY_PENDING_SECONDS`, well above any request's run time). The records
live in `shared.store.idempotency`.

Use `@idempotent` on every view that creates a job, above the flask-smorest decorators:

    @blp.route("/<string:name>/rebuild")
    class Rebuild(MethodView):
        @idempotent
        @blp.response(202, JobSchema)
        def post(self, name): ...
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from collections.abc import Callable

from flask import Response, current_app, request
from flask_smorest import Blueprint, abort

from webapp.api.auth import principal
from webapp.api.runtime import swapline

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # visible ASCII, as header values travel safely
STORED_HEADERS = ("Content-Type", "Location", "X-Job-Id")
MARKER = "x-idempotent"


def fingerprint() -> str:
    """The request as far as idempotency is concerned: method, path, query, body (JSON compared by
    value, so key order and spacing do not matter) and who sent it."""
    raw = request.get_data(cache=True)  # cached: the view's body parser reads it again
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode() if raw else b""
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = raw
    who = found.key_id if (found := principal()) else "-"
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), request.query_string, who.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _replay(record: dict) -> Response:
    response = Response(record["body"], status=record["status"], headers=record["headers"])
    response.headers[REPLAYED_HEADER] = "true"
    return response


def idempotent(view: Callable) -> Callable:
    """Make a job-creating view honour the Idempotency-Key header (see the module docstring)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not re.match(KEY_PATTERN, key):
            abort(400, code="bad_idempotency_key",
                  message=f"{HEADER} must be 1 to 255 visible ASCII characters")
        store = swapline.runtime.svc.idempotency
        route = f"{request.method} {request.path}"
        mine = fingerprint()
        token, record = store.claim(route, key, mine)
        if token is None:
            if record is not None and record["fingerprint"] != mine:
                abort(422, code="idempotency_key_reused",
                      message=f"this {HEADER} was used with a different request; use a new key")
            if record is None or record["state"] == "pending":
                abort(409, code="idempotency_in_progress",
                      message=f"a request with this {HEADER} is still being processed; retry shortly",
                      headers={"Retry-After": "1"})
            return _replay(record)
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            store.release(route, key, token)
            raise
        if response.status_code >= 400 or response.is_streamed:
            store.release(route, key, token)
            return response
        store.finish(route, key, token, {
            "state": "done", "fingerprint": mine, "status": response.status_code,
            "body": response.get_data(as_text=True),
            "headers": {name: response.headers[name] for name in STORED_HEADERS if name in response.headers},
            "stored_at": time.time()})
        return response

    # The OpenAPI document gets the header and the 409/422 answers from webapp.api.apidoc.
    return Blueprint.doc(**{MARKER: True})(wrapper)


def document_operation(operation: dict) -> None:
    """The header, the replay header and the 409/422 answers, for the OpenAPI document."""
    if not operation.pop(MARKER, False):
        return
    operation.setdefault("parameters", []).append({
        "in": "header", "name": HEADER, "required": False,
        "description": "A unique key per logical request (e.g. a UUID). A retry with the same key and "
                       "body replays the first answer (same job) instead of creating a second job. "
                       "Stored 24 h (SWAPLINE_IDEMPOTENCY_TTL_SECONDS).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": KEY_PATTERN}})
    responses = operation.setdefault("responses", {})
    replay_note = f"A replay carries `{REPLAYED_HEADER}: true`."
    for code, response in responses.items():
        if str(code).startswith("2") and isinstance(response, dict):
            before = (response.get("description") or "").rstrip()
            stop = "" if before.endswith(".") or not before else "."
            response["description"] = f"{before}{stop} {replay_note}".strip()
            response.setdefault("headers", {})[REPLAYED_HEADER] = {
                "description": "true when this answer is the stored answer to an earlier request with "
                               "the same Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}}
    _add_error(responses, "409", f"A request with this {HEADER} is still being processed (retry after "
                                 "Retry-After seconds)")
    _add_error(responses, "422", f"This {HEADER} was used with a different request, or the body is invalid")
    _add_error(responses, "400", f"Malformed {HEADER} or body")


def _add_error(responses: dict, code: str, description: str) -> None:
    existing = responses.get(code)
    if isinstance(existing, dict):
        before = existing.get("description")
        existing["description"] = f"{before}; or: {description}" if before else description
    elif existing is None:
        schema = {"$ref": "#/components/schemas/Error"}
        responses[code] = {"description": description, "content": {"application/json": {"schema": schema}}}
