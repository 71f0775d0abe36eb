"""Keys limited to some collections, a limit on failed authentications, admin-page CSRF tokens bound to
a session, and Flower authenticated off loopback (security issue: scopes). Each test failed on the code
before the change that made it pass."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

from shared.settings import Settings, SettingsError, load_settings, settings_env

pytestmark = pytest.mark.security

ADMIN = "scope-admin-0123456789abcdefghij"
SCOPED = "scope-scoped-0123456789abcdefghi"  # write on docs, read on notes
DOCS_ADMIN = "scope-docsadmin-0123456789abcdef"  # admin on docs only
KEYS = ((ADMIN, "admin"), (SCOPED, "write@docs"), (SCOPED, "read@notes"), (DOCS_ADMIN, "admin@docs"))
PLAIN_KEYS = ((ADMIN, "admin"),)  # what the limit and CSRF tests need, in the syntax of before
DOC = {"documents": [{"id": "a", "text": "hello"}], "rebuild": False}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}



@pytest.fixture
def scoped_app(settings, make_app):
    app = make_app(settings.with_(api_keys=KEYS))
    client = app.test_client()
    for name in ("docs", "notes", "secret"):
        assert client.post("/v1/collections", json={"name": name}, headers=bearer(ADMIN)).status_code == 201
    return app


def test_grants_name_collections_and_round_trip():
    from shared.settings import parse_grant

    env = {"SWAPLINE_API_KEYS": f"{ADMIN}:admin,{SCOPED}:write@docs+notes,{DOCS_ADMIN}:read@*"}
    settings = load_settings(env)
    assert settings.api_keys == ((ADMIN, "admin"), (SCOPED, "write@docs+notes"), (DOCS_ADMIN, "read@*"))
    assert parse_grant("write@docs+notes") == ("write", frozenset({"docs", "notes"}))
    assert parse_grant("read@*") == parse_grant("read") == ("read", None)
    assert load_settings(settings_env(settings)) == settings
    for bad in ("write@Docs", "write@docs+", "write@docs,notes", "owner@docs", "write@a:b"):
        with pytest.raises(SettingsError):
            Settings(api_keys=((ADMIN, bad),))
    with pytest.raises(SettingsError) as refused:
        load_settings({"SWAPLINE_API_KEYS": f"{ADMIN}:write@no+Way"})
    assert ADMIN not in str(refused.value)  # the error names the grant, never the key


@pytest.mark.integration
def test_a_scoped_key_sees_and_touches_only_its_collections(scoped_app):
    client = scoped_app.test_client()
    h = bearer(SCOPED)
    listed = client.get("/v1/collections", headers=h)
    assert [c["name"] for c in listed.json["collections"]] == ["docs", "notes"]
    assert [c["name"] for c in client.get("/v1/collections", headers=bearer(ADMIN)).json["collections"]] == [
        "docs", "notes", "secret"]
    # Another collection looks exactly like one that does not exist: 404, not 403.
    absent = client.get("/v1/collections/nope", headers=bearer(ADMIN))
    for method, path, body in (("GET", "", None), ("GET", "/versions", None), ("GET", "/documents", None),
                               ("GET", "/sources", None), ("POST", "/search", {"query": "x"}),
                               ("POST", "/documents", DOC), ("POST", "/rebuild", None), ("DELETE", "", None)):
        hidden = client.open(f"/v1/collections/secret{path}", method=method, json=body, headers=h)
        assert hidden.status_code == 404, (method, path, hidden.json)
        assert hidden.json["code"] == absent.json["code"] == "not_found"
        assert hidden.json["message"] == absent.json["message"].replace("nope", "secret")
    # Roles per collection: write on docs, read on notes.
    assert client.get("/v1/collections/notes", headers=h).status_code == 200
    assert client.post("/v1/collections/docs/documents", json=DOC, headers=h).status_code == 202
    assert client.post("/v1/collections/notes/documents", json=DOC, headers=h).status_code == 403
    # Creating: only a collection of its own.
    refused = client.post("/v1/collections", json={"name": "elsewhere"}, headers=h)
    assert refused.status_code == 403 and refused.json["code"] == "forbidden"
    assert client.post("/v1/collections", json={"name": "docs"}, headers=h).status_code == 409
    # Routes over every collection need a key granted on every collection.
    for path in ("/v1/webhooks", "/metrics", "/admin"):
        assert client.get(path, headers=bearer(DOCS_ADMIN)).status_code == 403, path
    # The readiness probe tells a scoped key no collection names.
    ready = client.get("/readyz", headers=h).json["checks"]
    assert "served_versions" not in ready and "load_failures" not in ready


@pytest.mark.integration
def test_a_scoped_key_sees_only_jobs_of_its_collections(scoped_app):
    client = scoped_app.test_client()
    secret_job = client.post("/v1/collections/secret/documents", json=DOC, headers=bearer(ADMIN)).json["id"]
    docs_job = client.post("/v1/collections/docs/documents", json=DOC, headers=bearer(DOCS_ADMIN)).json["id"]
    for key in (SCOPED, DOCS_ADMIN):
        jobs = client.get("/v1/jobs", headers=bearer(key)).json["jobs"]
        assert [j["id"] for j in jobs] == [docs_job], key
        assert client.get("/v1/jobs?collection=secret", headers=bearer(key)).json["jobs"] == []
        absent = client.get(f"/v1/jobs/{secret_job}", headers=bearer(key))
        assert absent.status_code == 404 and absent.json["message"] == f"job {secret_job!r} does not exist"
        assert client.get(f"/v1/jobs/{docs_job}", headers=bearer(key)).status_code in (200, 202)
    assert {j["id"] for j in client.get("/v1/jobs", headers=bearer(ADMIN)).json["jobs"]} == {secret_job, docs_job}
    # Cancel: 404 for another collection's job, 403 without admin on the job's own collection.
    assert client.post(f"/v1/jobs/{secret_job}/cancel", headers=bearer(DOCS_ADMIN)).status_code == 404
    assert client.post(f"/v1/jobs/{docs_job}/cancel", headers=bearer(SCOPED)).status_code == 403
    assert client.post(f"/v1/jobs/{docs_job}/cancel", headers=bearer(DOCS_ADMIN)).status_code in (202, 409)


@pytest.mark.integration
def test_a_scoped_key_streams_only_events_of_its_collections(settings, make_app):
    app = make_app(settings.with_(api_keys=KEYS, sse_max_seconds=1.0, sse_heartbeat_seconds=0.5))
    client = app.test_client()
    for name in ("docs", "secret"):
        client.post("/v1/collections", json={"name": name}, headers=bearer(ADMIN))
        client.post(f"/v1/collections/{name}/documents", json=DOC, headers=bearer(ADMIN))

    def collections_streamed(key: str) -> set:
        body = client.get("/v1/events?last_event_id=0-0", headers=bearer(key)).get_data(as_text=True)
        return {json.loads(line[len("data: "):])["collection"] for line in body.splitlines()
                if line.startswith("data: ")}

    assert collections_streamed(ADMIN) == {"docs", "secret"}
    assert collections_streamed(SCOPED) == {"docs"}


@pytest.mark.integration
def test_sources_of_other_collections_are_out_of_reach(settings, make_app, tmp_path):
    app = make_app(settings.with_(api_keys=KEYS, source_roots=str(tmp_path)))
    client = app.test_client()
    for name in ("docs", "secret"):
        client.post("/v1/collections", json={"name": name}, headers=bearer(ADMIN))
    (tmp_path / "tree").mkdir()
    body = {"path": str(tmp_path / "tree")}
    assert client.post("/v1/collections/secret/sources", json=body, headers=bearer(DOCS_ADMIN)).status_code == 404
    assert client.post("/v1/collections/docs/sources", json=body, headers=bearer(SCOPED)).status_code == 403
    added = client.post("/v1/collections/docs/sources", json=body, headers=bearer(DOCS_ADMIN))
    assert added.status_code == 202
    source = f"/v1/collections/docs/sources/{added.json['source']['id']}"
    assert client.delete(source, headers=bearer(SCOPED)).status_code == 403  # removing one needs admin too
    assert client.delete(source, headers=bearer(DOCS_ADMIN)).status_code == 202


@pytest.mark.integration
def test_failed_authentications_are_limited_per_client_address(settings, make_app):
    app = make_app(settings.with_(api_keys=PLAIN_KEYS))  # at the default limit, 10 a minute
    client = app.test_client()
    elsewhere = {"REMOTE_ADDR": "192.0.2.7"}
    # Successful requests never count.
    for _ in range(10):
        assert client.get("/v1/jobs", headers=bearer(ADMIN)).status_code == 200
    for _ in range(10):
        assert client.get("/v1/jobs", headers=bearer("wrong-0123456789abcdefghijklmn")).status_code == 401
    throttled = client.get("/v1/jobs", headers=bearer("wrong-0123456789abcdefghijklmn"))
    assert throttled.status_code == 429 and throttled.json["code"] == "too_many_failures"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    # While it lasts, no key from that address is tried, a right one included (else guessing goes on).
    assert client.get("/v1/jobs", headers=bearer(ADMIN)).status_code == 429
    # Other addresses are not affected, and requests without a key are answered as before.
    assert client.get("/v1/jobs", headers=bearer(ADMIN), environ_base=elsewhere).status_code == 200
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/healthz").status_code == 200


@pytest.mark.integration
def test_admin_csrf_tokens_belong_to_one_session_and_expire(settings, make_app):
    from webapp.api import auth

    app = make_app(settings.with_(api_keys=PLAIN_KEYS))
    app.test_client().post("/v1/collections", json={"name": "docs"}, headers=bearer(ADMIN))

    def load_page(client) -> str:
        page = client.get("/admin", headers=bearer(ADMIN))
        assert page.status_code == 200
        cookie = page.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
        return re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True)).group(1)

    def rebuild(client, token: str) -> int:
        return client.post("/admin/collections/docs/rebuild", headers={**bearer(ADMIN), auth.CSRF_HEADER: token}
                           ).status_code

    first, second = app.test_client(), app.test_client()
    token_a, token_b = load_page(first), load_page(second)
    assert token_a != token_b
    assert rebuild(app.test_client(), token_a) == 403  # a leaked token without its session's cookie
    assert rebuild(second, token_a) == 403  # ... or with another session's cookie
    assert rebuild(first, token_a) == 202
    # An expired token of the right session is refused too.
    ring = app.extensions["swapline_auth"]
    session = first.get_cookie(auth.CSRF_COOKIE, path="/admin").value
    old = auth.csrf_token(ring.principal_of(ADMIN), ring, session, now=time.time() - auth.CSRF_MAX_AGE - 5)
    assert rebuild(first, old) == 403


def test_flower_off_loopback_needs_basic_auth(tmp_path):
    from webapp.devstack.launcher import Launcher, LaunchError, flower_env, parse_options
    from webapp.devstack.supervisor import Supervisor

    settings = Settings(data_dir=tmp_path, embedder="hash")
    for host in ("0.0.0.0", "::", "10.1.2.3", "search.example"):
        with pytest.raises(LaunchError, match="FLOWER_BASIC_AUTH"):
            flower_env(settings, {}, host)
    guarded = flower_env(settings, {"FLOWER_BASIC_AUTH": "ops:s3cret", "FLOWER_UNAUTHENTICATED_API": "true"},
                         "0.0.0.0")
    assert guarded["FLOWER_BASIC_AUTH"] == "ops:s3cret" and "FLOWER_UNAUTHENTICATED_API" not in guarded
    with pytest.raises(LaunchError):
        flower_env(settings, {"FLOWER_BASIC_AUTH": "ops"}, "0.0.0.0")
    for host in ("127.0.0.1", "localhost", "::1"):
        assert flower_env(settings, {}, host)["FLOWER_UNAUTHENTICATED_API"] == "true"
    # The launcher refuses before it starts anything.
    sup = Supervisor(output=io.StringIO())
    opts = parse_options(["--host", "0.0.0.0", "--var-dir", str(tmp_path)], environ={})
    with pytest.raises(LaunchError, match="Flower"):
        Launcher(opts, settings, {}, sup=sup)._run()
    assert sup.children == []


def test_a_crafted_csrf_token_is_refused_not_a_crash():
    """The token's expiry must be plain digits: "²" passes str.isdigit() but not int(); 5,000 digits
    would be a huge int. Both are refused as invalid tokens (a 403), never a 500."""
    from webapp.api import auth

    ring = auth.KeyRing(PLAIN_KEYS)
    for token in ("\u00b2.abc", "9" * 5000 + ".abc", ".abc", "abc"):
        assert auth.csrf_valid(token, None, ring, "session") is False
