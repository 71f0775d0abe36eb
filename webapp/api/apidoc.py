"""What the OpenAPI document says beyond the marshmallow schemas, added per operation by one apispec
plugin: its `operationId` (read from the path, see `operation_id`), the auth scheme and required role
(webapp.api.auth), the Idempotency-Key header and its answers (webapp.api.idempotency), and the error
answers every operation can give. Also the docs UI at /docs,
whose Swagger UI files come from the installed swagger-ui-bundle package, never from a CDN, so the page
works offline and behind a strict proxy."""

from __future__ import annotations

import http

from apispec import BasePlugin
from flask import Flask, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from shared.settings import Settings
from webapp.api import auth, idempotency
from webapp.api.problem import PROBLEM_JSON

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
ERROR_REF = "#/components/schemas/Error"
DOCS_PATH = "docs"
DOCS_ASSETS = "/docs/assets/"
ASSET_MAX_AGE = 24 * 3600


def serve_docs_ui(app: Flask) -> None:
    """Swagger UI at /docs with its scripts and styles served by this app from the installed package."""
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", DOCS_PATH)
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", DOCS_ASSETS)
    # No validator badge: Swagger UI would fetch it from validator.swagger.io.
    app.config.setdefault("OPENAPI_SWAGGER_UI_CONFIG", {"validatorUrl": None})
    app.add_url_rule(f"{DOCS_ASSETS}<path:filename>", "docs_assets",
                     lambda filename: send_from_directory(str(swagger_ui_path), filename, max_age=ASSET_MAX_AGE))


def _status_ref(code: int) -> str:
    # flask-smorest registers a response component per status, named after http.HTTPStatus.
    return http.HTTPStatus(code).name


# The verb of an operation on one item (the path ends with its id).
ITEM_VERBS = {"get": "get", "delete": "delete", "put": "replace", "patch": "update"}


def _singular(noun: str) -> str:
    noun = noun[:-3] + "y" if noun.endswith("ies") else noun.removesuffix("s")
    return noun[:1].upper() + noun[1:]


def operation_id(path: str, method: str) -> str:
    """A readable operationId from the path and method, so every operation has one without an edit per
    view: `listJobs` and `createCollection` on a plural noun, `getJob` and `deleteSource` on one item,
    and for an action under an item its name and the item's noun: `searchCollection`, `cancelJob`,
    `reconcileSource`. Where that reads wrong a view names its own: `@blp.doc(operationId="...")`."""
    parts = [part for part in path.strip("/").split("/") if part and part != "v1"]
    nouns = [part for part in parts if not part.startswith("{")]
    last = parts[-1]
    if last.startswith("{"):
        return ITEM_VERBS.get(method, method) + _singular(nouns[-1])
    plural = last.endswith("s")
    if method == "get":
        return ("list" if plural else "get") + last[:1].upper() + last[1:]
    if method == "post" and plural:
        return "create" + _singular(last)
    if len(nouns) > 1 and parts[-2].startswith("{"):
        return last + _singular(nouns[-2])
    return method + last[:1].upper() + last[1:]


# OpenAPI links: where an answer's body names something the next call can use, so clients (and
# schemathesis's stateful run in tests/test_openapi_contract.py) can follow create -> read/search/delete.
# operationId -> (status of the answer, {target operationId: {path parameter: runtime expression}}).
_NAME = {"name": "$response.body#/name"}
_JOB = {"job_id": "$response.body#/id"}
_WEBHOOK = {"webhook_id": "$response.body#/id"}
LINKS: dict[str, tuple[str, dict[str, dict[str, str]]]] = {
    "createCollection": ("201", {target: _NAME for target in (
        "getCollection", "searchCollection", "addDocuments", "listDocuments", "listVersions", "listSources",
        "rebuildCollection", "rollbackCollection", "deleteCollection")}),
    "addDocuments": ("202", {"getJob": _JOB, "cancelJob": _JOB}),
    "rebuildCollection": ("202", {"getJob": _JOB, "cancelJob": _JOB}),
    "deleteCollection": ("202", {"getJob": _JOB, "cancelJob": _JOB}),
    "deleteDocument": ("202", {"getJob": _JOB, "cancelJob": _JOB}),
    "evaluateCollection": ("202", {"getJob": _JOB, "cancelJob": _JOB}),
    "createWebhook": ("201", {"getWebhook": _WEBHOOK, "listDeliveries": _WEBHOOK, "deleteWebhook": _WEBHOOK}),
}


def _document_links(operation: dict) -> None:
    status, targets = LINKS.get(operation.get("operationId", ""), ("", {}))
    responses = operation.get("responses", {})
    response = responses.get(int(status), responses.get(status)) if status else None  # flask-smorest keys by int
    if not isinstance(response, dict):
        return
    links = response.setdefault("links", {})
    for target, parameters in targets.items():
        links.setdefault(target, {"operationId": target, "parameters": dict(parameters)})


class SwaplineSpecPlugin(BasePlugin):
    def operation_helper(self, path=None, operations=None, **kwargs):
        for method, operation in (operations or {}).items():
            if method not in METHODS:
                continue
            operation.setdefault("operationId", operation_id(path or "", method))
            _document_links(operation)
            idempotency.document_operation(operation)
            auth.document_operation(path or "", method, operation)
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation or method in ("post", "put", "patch"):
                responses.setdefault("413", _status_ref(413))
            responses.setdefault("500", _status_ref(500))
            for response in responses.values():
                _problem_content(response)


def _problem_content(response) -> None:
    """An error answer documented as JSON is a problem document: say so in its content type."""
    content = response.get("content") if isinstance(response, dict) else None
    if content and content.get("application/json", {}).get("schema") == {"$ref": ERROR_REF}:
        content[PROBLEM_JSON] = content.pop("application/json")


def api_description(settings: Settings) -> str:
    return f"""Semantic search in which indexing never blocks searching.

**Errors.** Every 4xx and 5xx answer is an RFC 9457 problem document, `application/problem+json`:
`type` (`urn:swapline:problem:<code>`), `title` (the HTTP status phrase), `status`, `detail`, plus
Swapline's members: `code`, machine-readable (e.g. `not_found`, `invalid`, `queue_full`); `message`, the
same text as `detail`; `errors`, per-field validation messages; and where they apply `job_id` (the job in
the way) and `queue` (the full queue). Unknown body fields are rejected with 422. Every answer carries
`X-Request-ID` (the one the request sent, else a new one), also found in the server's log lines.

**Auth.** `Authorization: Bearer <key>`; roles `read` (search and GET) < `write` (submit jobs) < `admin`
(cancel, delete, rollback, admin page). 401 without a valid key, 403 when its role is too low. HTTP Basic
(the key as password) is accepted only by the admin page and the event stream it follows (GET /v1/events),
never by the rest of the API, so a browser logged into /admin cannot be made to act by another site.

**Jobs.** Job-creating requests answer 202 with the job and `Location: /v1/jobs/{{id}}`. Send
`Idempotency-Key` to retry safely. When a queue already holds its bound of queued jobs
(SWAPLINE_MAX_QUEUED_INGEST={settings.max_queued_ingest},
SWAPLINE_MAX_QUEUED_INDEX={settings.max_queued_index}) the answer is 503 with `Retry-After` and nothing is created.

**Limits** (this deployment): request body {settings.max_request_bytes} bytes (SWAPLINE_MAX_REQUEST_BYTES, 413
past it); {settings.max_documents_per_batch} documents per batch (SWAPLINE_MAX_DOCUMENTS_PER_BATCH, 413);
{settings.max_document_bytes} bytes of text per document (SWAPLINE_MAX_DOCUMENT_BYTES, 413);
search `k` at most {settings.max_k} (SWAPLINE_MAX_K, 422); query at most {settings.max_query_chars} characters
(SWAPLINE_MAX_QUERY_CHARS, 422); `k` must be an integer (1.5 or "3" is a 422). Bodies must be JSON that
round-trips: NaN, Infinity, numbers too large for a double and lone UTF-16 surrogates (`\\ud800`) are
refused with 422, a body nested too deeply with 400. In front of the API, the HTTP server (gunicorn)
refuses a request line over 4094 bytes (414), a header over 8190 bytes or more than 100 headers (431)
and malformed requests (400), in the same JSON error shape.

**Storage.** A request that cannot be staged because the data volume is full answers 507 with
`Retry-After`; nothing is created. A job that failed for that reason says `"retryable": true`.

**Degraded mode.** While Redis is unreachable, searches of a collection the answering process serves
are answered from memory with `X-Swapline-Degraded: redis-unavailable`; submissions, job status and
events answer 503 with `Retry-After`, and `/readyz` says not ready until Redis answers again.
"""
