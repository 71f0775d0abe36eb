"""API keys and roles, the one error shape, and request limits, on real API processes (plus two
in-process apps for the paths a real process cannot be made to take: an unhandled exception and
Redis going away)."""

from __future__ import annotations

import base64

import pytest
import requests

from shared.errors import JobInProgress
from tests.support import free_port

pytestmark = pytest.mark.integration

KEYS = (("k-admin-0123456789abcdefghij", "admin"), ("k-write-0123456789abcdefghij", "write"),
        ("k-read-0123456789abcdefghijk", "read"))
AUTH = {role: {"Authorization": f"Bearer {key}"} for key, role in KEYS}
RANK = {"read": 1, "write": 2, "admin": 3}


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["Content-Type"] == "application/problem+json", resp.headers
    body = resp.json()
    assert isinstance(body["code"], str) and isinstance(body["message"], str), body
    # RFC 9457 members, consistent with the status line and Swapline's own members.
    assert body["status"] == status and body["detail"] == body["message"], body
    assert body["type"] == f"urn:swapline:problem:{body['code']}" and isinstance(body["title"], str), body
    if code:
        assert body["code"] == code, body
    if "errors" in body:
        assert isinstance(body["errors"], dict)
    return body


@pytest.fixture
def keyed(settings):
    return settings.with_(api_keys=KEYS, max_request_bytes=64 * 1024, max_documents_per_batch=3,
                          max_document_bytes=100, max_k=5, max_query_chars=50)


def test_role_matrix(keyed, procs):
    # The matrix sends a wrong key to every route; the failure limit has its own test (test_security_scopes).
    base = procs.api(keyed.with_(auth_failures_per_minute=0))
    for name in ("docs", "c1", "c2", "c3"):
        assert requests.post(f"{base}/v1/collections", json={"name": name}, headers=AUTH["admin"]).status_code == 201
    job_id = requests.post(f"{base}/v1/collections/docs/rebuild", headers=AUTH["write"]).json()["id"]
    doc = {"documents": [{"id": "a", "text": "hello"}], "rebuild": False}
    # (method, path, body, role needed, the status an adequate key gets)
    matrix = [
        ("GET", "/v1/jobs", None, "read", 200),
        ("GET", f"/v1/jobs/{job_id}", None, "read", 202),
        ("GET", "/v1/collections/docs", None, "read", 200),
        ("GET", "/v1/collections/docs/versions", None, "read", 200),
        ("POST", "/v1/collections/docs/search", {"query": "hello", "k": 3}, "read", 200),
        ("POST", "/v1/collections", {"name": "new"}, "write", 201),
        ("POST", "/v1/collections/c1/documents", doc, "write", 202),
        ("POST", "/v1/collections/c2/rebuild", None, "write", 202),
        ("POST", f"/v1/jobs/{job_id}/cancel", None, "admin", 202),
        ("DELETE", "/v1/collections/c1/documents/a", None, "admin", 202),
        ("DELETE", "/v1/collections/c3", None, "admin", 202),
        ("POST", "/v1/collections/docs/rollback", {"version": 1}, "admin", 404),
        ("GET", "/admin", None, "admin", 200),
        ("GET", "/metrics", None, "read", 200),
    ]
    for method, path, body, role, ok in matrix:
        def call(headers, body=body, method=method, path=path):
            return requests.request(method, f"{base}{path}", json=body, headers=headers)

        missing = call({})
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"].startswith(("Bearer realm=", "Basic realm=")), path
        assert_error(call({"Authorization": "Bearer wrong"}), 401, "unauthorized")
        for lower in (r for r in RANK if RANK[r] < RANK[role]):
            assert_error(call(AUTH[lower]), 403, "forbidden")
        # The lowest adequate key goes through (the call that changes state runs exactly once).
        assert call(AUTH[role]).status_code == ok, (method, path)
    # The event stream needs `read` too (checked without opening a stream that would stay open).
    assert_error(requests.get(f"{base}/v1/events"), 401, "unauthorized")
    assert_error(requests.get(f"{base}/v1/events", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    # A higher role includes the lower ones.
    assert requests.get(f"{base}/v1/jobs", headers=AUTH["admin"]).status_code == 200
    search = requests.post(f"{base}/v1/collections/docs/search", json={"query": "x", "k": 1}, headers=AUTH["write"])
    assert search.status_code == 200
    # Browsers send the key as the Basic password (the admin page prompts for it).
    basic = base64.b64encode(b"anyone:k-admin-0123456789abcdefghij").decode()
    assert requests.get(f"{base}/admin", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert requests.get(f"{base}/admin").headers["WWW-Authenticate"] == 'Basic realm="swapline"'
    # Public: probes, the OpenAPI document, the docs UI.
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert requests.get(f"{base}{path}").status_code == 200, path
    assert requests.get(f"{base}/readyz", headers=AUTH["read"]).json()["checks"]["auth"] == "keys"
    spec = requests.get(f"{base}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"]}
    cancel = spec["paths"]["/v1/jobs/{job_id}/cancel"]["post"]
    assert cancel["security"] == [{"bearerAuth": []}] and cancel["x-required-role"] == "admin"
    assert {"401", "403"} <= set(cancel["responses"])
    assert spec["paths"]["/healthz"]["get"]["security"] == []  # explicitly public


def test_open_mode_says_so(settings, procs):
    base = procs.api(settings)
    assert requests.get(f"{base}/readyz").json()["checks"]["auth"] == "open"
    assert requests.get(f"{base}/v1/jobs").status_code == 200
    log = (procs.log_dir / "api1.log").read_text()
    assert "event=auth.open" in log and "WARNING" in log


def test_one_error_shape_and_limits(keyed, procs):
    base = procs.api(keyed)
    h = AUTH["admin"]
    assert requests.post(f"{base}/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
    assert_error(requests.get(f"{base}/nowhere", headers=h), 404, "not_found")
    assert_error(requests.get(f"{base}/v1/nowhere", headers=h), 404, "not_found")
    not_allowed = requests.put(f"{base}/v1/jobs", headers=h)
    assert_error(not_allowed, 405, "method_not_allowed")
    assert "GET" in not_allowed.headers["Allow"]
    assert_error(requests.get(f"{base}/v1/collections/nope", headers=h), 404, "not_found")
    assert_error(requests.get(f"{base}/v1/jobs/{'0' * 32}", headers=h), 404, "not_found")
    # Bodies: not JSON, unknown fields, wrong types.
    garbled = requests.post(f"{base}/v1/collections", data="{not json",
                            headers={**h, "Content-Type": "application/json"})
    assert_error(garbled, 400)
    unknown = assert_error(requests.post(f"{base}/v1/collections", json={"name": "x", "color": "red"}, headers=h),
                           422, "invalid")
    assert "color" in unknown["errors"]
    nested = requests.post(f"{base}/v1/collections/docs/documents", headers=h,
                           json={"documents": [{"id": "a", "text": "t", "extra": 1}]})
    assert "extra" in str(assert_error(nested, 422, "invalid")["errors"])
    assert_error(requests.post(f"{base}/v1/collections/docs/documents", json=[1, 2], headers=h), 422, "invalid")
    # Limits.
    too_big = requests.post(f"{base}/v1/collections/docs/documents", headers=h,
                            json={"documents": [{"id": "a", "text": "x" * (100 * 1024)}]})
    body = assert_error(too_big, 413, "payload_too_large")
    assert "SWAPLINE_MAX_REQUEST_BYTES" in body["message"]
    many = {"documents": [{"id": f"d{i}", "text": "t"} for i in range(4)]}
    assert_error(requests.post(f"{base}/v1/collections/docs/documents", json=many, headers=h), 413, "batch_too_large")
    long_text = {"documents": [{"id": "a", "text": "é" * 51}]}  # 102 bytes of UTF-8
    assert_error(requests.post(f"{base}/v1/collections/docs/documents", json=long_text, headers=h), 413,
                 "document_too_large")
    assert_error(requests.post(f"{base}/v1/collections/docs/search", json={"query": "q", "k": 6}, headers=h), 422)
    assert_error(requests.post(f"{base}/v1/collections/docs/search", json={"query": "q" * 51}, headers=h), 422)
    assert requests.post(f"{base}/v1/collections/docs/search", json={"query": "q" * 50, "k": 5},
                         headers=h).status_code == 200



def test_unhandled_exception_answers_500_in_the_error_shape(settings, make_app):
    app = make_app(settings)

    @app.get("/v1/boom")
    def boom():
        raise RuntimeError("kaboom")

    resp = app.test_client().get("/v1/boom")
    assert resp.status_code == 500 and resp.mimetype == "application/problem+json"
    detail = "internal server error; the details are in the server log"
    assert resp.get_json() == {"type": "urn:swapline:problem:internal_error", "title": "Internal Server Error",
                               "status": 500, "detail": detail, "code": "internal_error", "message": detail}


def test_a_job_in_progress_is_one_409_naming_the_job(settings, make_app):
    """Views let JobInProgress propagate (a second drop, rebuild or reconcile); one handler answers."""
    app = make_app(settings)

    @app.post("/v1/busy")
    def busy():
        raise JobInProgress("reconcile", "j-in-the-way", "a reconcile of this source is already queued or running")

    resp = app.test_client().post("/v1/busy")
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    assert resp.headers["Location"] == "/v1/jobs/j-in-the-way"
    detail = "a reconcile of this source is already queued or running"
    assert resp.get_json() == {"type": "urn:swapline:problem:reconcile_in_progress", "title": "Conflict",
                               "status": 409, "detail": detail, "code": "reconcile_in_progress",
                               "message": detail, "job_id": "j-in-the-way"}


def test_openapi_documents_every_error_as_a_problem_document(settings, make_app):
    spec = make_app(settings).test_client().get("/openapi.json").get_json()
    error = spec["components"]["schemas"]["Error"]
    assert {"type", "title", "status", "detail", "code", "message"} <= set(error["required"])
    assert {"errors", "job_id", "queue"} <= set(error["properties"])
    components = spec["components"]["responses"]
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status == "default" or int(status) < 400:
                    continue
                if "$ref" in response:
                    response = components[response["$ref"].rsplit("/", 1)[-1]]
                if (path, method, status) == ("/readyz", "get", "503"):
                    continue  # not an error: the health body saying what is not ready
                assert response["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}, (path, method, status)
                checked += 1
    assert checked > 50


def test_every_operation_has_a_unique_readable_operation_id(settings, make_app):
    spec = make_app(settings).test_client().get("/openapi.json").get_json()
    ids = {(path, method): operation.get("operationId") for path, operations in spec["paths"].items()
           for method, operation in operations.items() if method != "parameters"}
    assert all(ids.values()), [op for op, found in ids.items() if not found]
    assert len(set(ids.values())) == len(ids), sorted(ids.values())
    assert all(found.isidentifier() and found[0].islower() for found in ids.values()), ids
    assert ids[("/v1/collections/{name}/search", "post")] == "searchCollection"
    assert ids[("/v1/jobs", "get")] == "listJobs" and ids[("/v1/jobs/{job_id}", "get")] == "getJob"
    assert ids[("/v1/jobs/{job_id}/cancel", "post")] == "cancelJob"
    assert ids[("/v1/collections", "post")] == "createCollection"
    assert ids[("/v1/collections/{name}/sources/{source_id}/reconcile", "post")] == "reconcileSource"
    assert ids[("/v1/webhooks/{webhook_id}/deliveries", "get")] == "listDeliveries"
    assert ids[("/v1/collections/{name}/documents", "post")] == "addDocuments"  # named by its view


def test_redis_down_answers_503(settings, make_app):
    app = make_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    resp = app.test_client().get("/v1/jobs")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert resp.get_json()["code"] == "unavailable"
