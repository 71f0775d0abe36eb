"""The Idempotency-Key decorator on its own: a tiny Flask app whose view counts its runs, fakeredis."""

from __future__ import annotations

import threading
import types

import fakeredis
import pytest
from flask import Flask, jsonify
from flask_smorest import abort

from shared import keys
from shared.services import IDEMPOTENCY_PENDING_SECONDS
from shared.settings import Settings
from shared.store.idempotency import IdempotencyStore
from tests.support import wait_for
from webapp.api.errors import Api
from webapp.api.idempotency import idempotent


@pytest.fixture
def app():
    fake = fakeredis.FakeRedis(decode_responses=True)
    app = Flask(__name__)
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3",
                      SWAPLINE_SETTINGS=Settings(idempotency_ttl_seconds=600))
    Api(app)  # the error handlers
    store = IdempotencyStore(fake, ttl_seconds=600, pending_ttl_seconds=IDEMPOTENCY_PENDING_SECONDS)
    app.extensions["swapline"] = types.SimpleNamespace(svc=types.SimpleNamespace(idempotency=store))
    app.runs = []
    app.gate = None

    @app.post("/jobs/<name>")
    @idempotent
    def create(name):
        if app.gate is not None:
            app.gate.wait(10)
        if name == "missing":
            abort(404, message="no such thing")
        if name == "crash":
            raise RuntimeError("boom")
        app.runs.append(name)
        return jsonify({"id": f"job-{len(app.runs)}"}), 202, {"Location": f"/jobs/job-{len(app.runs)}"}

    app.fake = fake
    yield app
    fake.close()


def post(app, name="a", key="k1", json=None):
    headers = {"Idempotency-Key": key} if key else {}
    return app.test_client().post(f"/jobs/{name}", json=json if json is not None else {"x": 1, "y": [1, 2]},
                                  headers=headers)


def test_replay_is_exact_and_runs_the_view_once(app):
    first = post(app)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = post(app, json={"y": [1, 2], "x": 1})  # same JSON, other key order
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data and again.headers["Location"] == first.headers["Location"]
    assert app.runs == ["a"]
    assert 0 < app.fake.ttl(keys.idempotency("POST /jobs/a", "k1")) <= 600


def test_different_body_is_422_and_other_route_is_independent(app):
    post(app)
    reused = post(app, json={"x": 2})
    assert reused.status_code == 422 and reused.get_json()["code"] == "idempotency_key_reused"
    assert post(app, name="b").status_code == 202  # same key, other route
    assert app.runs == ["a", "b"]


def test_without_a_key_every_request_runs(app):
    post(app, key=None)
    post(app, key=None)
    assert app.runs == ["a", "a"]


def test_in_progress_is_409_with_retry_after(app):
    app.gate = threading.Event()
    first = {}
    worker = threading.Thread(target=lambda: first.setdefault("resp", post(app)))
    worker.start()
    try:
        wait_for(lambda: app.fake.get(keys.idempotency("POST /jobs/a", "k1")), message="the claim")
        busy = post(app)
        assert busy.status_code == 409 and busy.get_json()["code"] == "idempotency_in_progress"
        assert busy.headers["Retry-After"] == "1"
    finally:
        app.gate.set()
        worker.join(10)
    assert first["resp"].status_code == 202
    assert post(app).headers["Idempotent-Replayed"] == "true"
    assert app.runs == ["a"]


def test_refusals_and_crashes_release_the_key(app):
    assert post(app, name="missing").status_code == 404
    assert app.fake.get(keys.idempotency("POST /jobs/missing", "k1")) is None
    assert post(app, name="crash").status_code == 500
    assert app.fake.get(keys.idempotency("POST /jobs/crash", "k1")) is None
    assert post(app, key="bad key with spaces").status_code == 400
