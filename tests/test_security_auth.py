"""Secure by default (security review, finding 1 and the smaller ones of 7): an API without keys serves
loopback only unless told otherwise, keys are long, a source needs admin, the readiness probe tells no
names without a key, the admin page cannot be framed, a browser's DNS rebinding finds no open API. Each
test failed on the code before the change that made it pass."""

from __future__ import annotations

import subprocess

import pytest

from shared.settings import MIN_KEY_CHARS, Settings, SettingsError, load_settings, settings_env
from tests.support import BIN, GUNICORN_CONFIG, ROOT, child_env, free_port, wait_for

pytestmark = pytest.mark.security

ADMIN = "sec-admin-0123456789abcdefghij"
WRITE = "sec-write-0123456789abcdefghij"
READ = "sec-read-0123456789abcdefghijk"
KEYS = ((ADMIN, "admin"), (WRITE, "write"), (READ, "read"))


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_short_keys_are_refused_at_start():
    with pytest.raises(SettingsError, match=f"at least {MIN_KEY_CHARS} characters"):
        Settings(api_keys=(("k-admin", "admin"),))
    with pytest.raises(SettingsError):
        load_settings({"SWAPLINE_API_KEYS": "short:read"})
    assert Settings(api_keys=KEYS).api_keys == KEYS
    with pytest.raises(SettingsError, match="SWAPLINE_AUTH"):
        Settings(auth="none")


def test_open_exposure_is_refused_unless_asked_for():
    from webapp.api.exposure import refuse_open_exposure

    for binds in (["0.0.0.0:8000"], ["127.0.0.1:8000", "[::]:8000"], ["10.0.0.5:80"]):
        with pytest.raises(SystemExit, match="without API keys"):
            refuse_open_exposure(Settings(), binds)
        refuse_open_exposure(Settings(auth="open"), binds)  # said explicitly
        refuse_open_exposure(Settings(api_keys=KEYS), binds)
    refuse_open_exposure(Settings(), ["127.0.0.1:8000", "localhost:9000", "[::1]:8000", "unix:/tmp/s.sock"])


@pytest.mark.integration
def test_an_api_without_keys_will_not_listen_on_every_interface(settings, tmp_path):
    """A real gunicorn at default auth settings, bound to 0.0.0.0 with no keys: it exits, saying why."""
    port = free_port()
    proc = subprocess.run([str(BIN / "gunicorn"), "-c", GUNICORN_CONFIG, "--bind", f"0.0.0.0:{port}",
                           "webapp:create_app()"], env=child_env(settings), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "without API keys" in proc.stderr + proc.stdout



@pytest.mark.integration
def test_an_open_api_answers_loopback_hosts_only(settings, make_app):
    """DNS rebinding: a page on evil.example re-binds its name to 127.0.0.1 and calls the open API with
    its own Host. Loopback names, and the hosts an operator allows, are answered."""
    client = make_app(settings).test_client()
    assert client.get("/v1/collections", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/v1/collections", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/v1/collections", headers={"Host": "[::1]:8000"}).status_code == 200
    refused = client.get("/v1/collections", headers={"Host": "evil.example:8000"})
    assert refused.status_code == 403 and refused.json["code"] == "host_refused"
    allowed = make_app(settings.with_(allowed_hosts="search.internal")).test_client()
    assert allowed.get("/v1/collections", headers={"Host": "search.internal"}).status_code == 200


@pytest.mark.integration
def test_an_api_opened_on_purpose_answers_any_host(settings, make_app):
    """SWAPLINE_AUTH=open is the operator saying every caller may come in, under any name."""
    client = make_app(settings.with_(auth="open")).test_client()
    assert client.get("/v1/collections", headers={"Host": "search.example.com"}).status_code == 200


@pytest.mark.integration
def test_adding_a_source_needs_admin(settings, make_app, tmp_path):
    client = make_app(settings.with_(api_keys=KEYS, source_roots=str(tmp_path))).test_client()
    assert client.post("/v1/collections", json={"name": "docs"}, headers=bearer(WRITE)).status_code == 201
    (tmp_path / "tree").mkdir()
    body = {"path": str(tmp_path / "tree")}
    refused = client.post("/v1/collections/docs/sources", json=body, headers=bearer(WRITE))
    assert refused.status_code == 403 and "admin" in refused.json["message"]
    assert client.post("/v1/collections/docs/sources", json=body, headers=bearer(ADMIN)).status_code == 202


@pytest.mark.integration
def test_readiness_details_need_a_key(settings, make_app):
    client = make_app(settings.with_(api_keys=KEYS)).test_client()
    client.post("/v1/collections", json={"name": "secret-project"}, headers=bearer(ADMIN))

    def ready(headers=None):
        resp = client.get("/readyz", headers=headers)
        return resp if resp.status_code == 200 else None

    anonymous = wait_for(ready, timeout=30, message="/readyz").json
    assert set(anonymous["checks"]) == {"redis", "index_watcher"}
    detailed = ready(bearer(READ)).json
    assert {"served_versions", "load_failures", "auth"} <= set(detailed["checks"])
    assert detailed["checks"]["embedder"]["calibration"] == {"state": "forced"}  # SWAPLINE_EMBEDDER=hash


@pytest.mark.integration
def test_the_admin_page_cannot_be_framed(settings, make_app):
    client = make_app(settings.with_(api_keys=KEYS)).test_client()
    resp = client.get("/admin", headers=bearer(ADMIN))
    assert resp.status_code == 200
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


@pytest.mark.integration
def test_failed_authentications_are_logged_with_the_key_id_and_client(settings, make_app, capfd):
    client = make_app(settings.with_(api_keys=KEYS)).test_client()
    assert client.get("/v1/collections", headers=bearer("not-a-key-0123456789abcdefgh")).status_code == 401
    line = next(line for line in capfd.readouterr().err.splitlines() if "auth.refused" in line)
    assert "key_id=" in line and "client=" in line and "not-a-key" not in line


def test_settings_round_trip_through_the_environment():
    """Children rebuild the same settings (auth and allowed hosts included)."""
    s = Settings(api_keys=KEYS, auth="open", allowed_hosts="a.example,b.example")
    assert load_settings(settings_env(s)) == s
