"""The search route's fast lane (webapp/api/searchlane.py): a plain search is answered by the lane, with
the answer, status and headers Flask's route gives the same request; everything else is handed to
Flask, which answers it as before (errors, refusals, failed keys counted once). The app runs in this
process on the session's redis-server over a version built by the domain code (hashing embedder)."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import Client

from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import submit_documents
from tests.support import make_services, wait_for
from webapp.api.schemas.search import SearchQuerySchema
from webapp.api.searchlane import PlainBody, SearchLane

pytestmark = pytest.mark.integration

READER = "lane-reader-0123456789abcdefghij"
ELSEWHERE = "lane-elsewhere-0123456789abcdefg"  # read on another collection only
KEYS = ((READER, "read"), (ELSEWHERE, "read@other"))
DOCS = [{"id": f"notes/d{i}.md", "text": f"# Title {i}\nPods and volumes, part {i}. " * 8,
         "metadata": {"type": "md", "tags": ["a", "b"] if i % 2 else ["c"]}} for i in range(12)]
PATH = "/v1/collections/docs/search"
# Headers whose values differ between two answers of one search.
UNSTABLE = {"Server-Timing", "X-Request-ID", "Content-Length"}


def bearer(key: str = READER, **extra: str) -> dict:
    return {"Authorization": f"Bearer {key}", **extra}


def built(settings) -> int:
    svc = make_services(settings, enqueued=[])
    assert svc.collections.create("docs")
    job = submit_documents(svc, "docs", DOCS, rebuild=True)
    run_ingest(svc, job["id"])
    done = svc.jobs.get(job["id"])
    run_rebuild(svc, done["result"]["rebuild_job_id"])
    return svc.pointers.get("docs")["version"]


def lane_of(app) -> SearchLane:
    return app.extensions["swapline_search_lane"]


def served(app, version: int, headers: dict) -> None:
    client = app.test_client()
    wait_for(lambda: client.post(PATH, json={"query": "x"}, headers=headers).json.get("index_version") == version,
             timeout=30, message=f"the app serves v{version}")


@pytest.fixture
def keyed(settings, make_app):
    settings = settings.with_(api_keys=KEYS, search_cache_size=0)  # no cache: every answer is computed
    version = built(settings)
    app = make_app(settings)
    served(app, version, bearer())
    return app, version


def both(app, body=None, headers=None, data=None, environ=None):
    """The same request answered by the lane and by Flask alone, and whether the lane answered it."""
    lane = lane_of(app)
    kwargs = {"headers": headers or {}, "environ_base": environ or {}}
    if data is None:
        kwargs["data"], kwargs["content_type"] = json.dumps(body), "application/json"
    else:
        kwargs["data"] = data
    before = lane.answered
    fast = Client(lane).post(PATH, **kwargs)
    answered = lane.answered > before
    full = Client(lane.inner).post(PATH, **kwargs)
    return fast, full, answered


def same(fast, full) -> None:
    assert fast.status_code == full.status_code, (fast.get_data(as_text=True), full.get_data(as_text=True))
    assert fast.get_data() == full.get_data()
    fast_headers = {k: v for k, v in fast.headers.items() if k not in UNSTABLE}
    full_headers = {k: v for k, v in full.headers.items() if k not in UNSTABLE}
    assert fast_headers == full_headers
    assert [p.split(";")[0] for p in fast.headers["Server-Timing"].split(", ")] == \
           [p.split(";")[0] for p in full.headers["Server-Timing"].split(", ")]
    assert fast.headers["X-Request-ID"] and full.headers["X-Request-ID"]


PLAIN = [
    {"query": "pods and volumes"},
    {"query": "pods", "k": 3, "mode": "vector"},
    {"query": "volumes", "mode": "keyword", "k": 5},
    {"query": "pods volumes", "mode": "hybrid", "filter": {"type": "md", "metadata.tags": {"in": ["a"]}}},
    {"query": "title", "group_by": "document", "max_tokens": 40, "k": 4},
    {"query": "pods", "mode": None, "filter": None, "group_by": None, "max_tokens": None},
]


def test_a_plain_search_is_answered_by_the_lane_as_flask_answers_it(keyed):
    app, version = keyed
    for body in PLAIN:
        fast, full, answered = both(app, body, bearer())
        assert answered and fast.status_code == 200 and fast.json["hits"], (body, fast.json)
        same(fast, full)
        assert fast.headers["X-Index-Version"] == str(version) and fast.headers["X-Cache"] == "miss"


def test_the_lane_answers_a_kept_version_a_request_id_and_a_charset(keyed):
    app, version = keyed
    fast, full, answered = both(app, {"query": "pods", "version": version},
                                bearer(**{"X-Request-ID": "client-id-1"}))
    assert answered
    same(fast, full)
    assert fast.headers["X-Request-ID"] == full.headers["X-Request-ID"] == "client-id-1"
    fast, full, answered = both(app, data=json.dumps({"query": "pods"}).encode(),
                                headers=bearer(**{"Content-Type": "application/json; charset=utf-8"}))
    assert answered
    same(fast, full)


HANDED_ON = [
    ("unknown collection", {"query": "x"}, None, None, 404),
    ("no key", {"query": "x"}, {}, None, 401),
    ("wrong key", {"query": "x"}, bearer("wrong-0123456789abcdefghijklmnop"), None, 401),
    ("key for another collection", {"query": "x"}, bearer(ELSEWHERE), None, 404),
    ("basic credentials", {"query": "x"}, {"Authorization": "Basic cjpsYW5lLXJlYWRlci0wMTIzNDU2Nzg5YWJjZGVmZ2hpag=="},
     None, 401),
    ("empty query", {"query": ""}, None, None, 422),
    ("k zero", {"query": "x", "k": 0}, None, None, 422),
    ("k a boolean", {"query": "x", "k": True}, None, None, 422),
    ("k a float", {"query": "x", "k": 3.0}, None, None, 422),
    ("k past the bound", {"query": "x", "k": 1000}, None, None, 422),
    ("unknown field", {"query": "x", "kk": 1}, None, None, 422),
    ("unknown mode", {"query": "x", "mode": "fuzzy"}, None, None, 422),
    ("filter outside the grammar", {"query": "x", "filter": {"colour": "red"}}, None, None, 422),
    ("version not kept", {"query": "x", "version": 999}, None, None, 404),
    ("version null", {"query": "x", "version": None}, None, None, 422),
    ("a list, not an object", ["x"], None, None, 422),
    ("NaN", None, None, b'{"query": "x", "k": NaN}', 422),
    ("a lone surrogate", None, None, b'{"query": "x\\ud800"}', 422),
    ("malformed", None, None, b'{"query": ', 400),
    ("not JSON's content type", None, bearer(**{"Content-Type": "text/plain"}), b'{"query": "x"}', 422),
    ("not UTF-8", None, None, '{"query": "x"}'.encode("utf-16"), 400),
]


def test_everything_else_is_handed_to_flask_which_answers_it(keyed):
    app, _ = keyed
    lane = lane_of(app)
    for what, body, headers, data, status in HANDED_ON:
        headers = bearer() if headers is None else headers
        if data is None:
            kwargs = {"headers": headers, "data": json.dumps(body), "content_type": "application/json"}
        else:
            kwargs = {"headers": {"Content-Type": "application/json", **headers}, "data": data}
        path = "/v1/collections/nosuch/search" if what == "unknown collection" else PATH
        before = lane.handed_on, lane.answered
        resp = Client(lane).post(path, **kwargs)
        assert (lane.handed_on, lane.answered) == (before[0] + 1, before[1]), what
        assert resp.status_code == status, (what, resp.get_data(as_text=True))
        assert resp.headers["Content-Type"] == "application/problem+json" and resp.headers["X-Request-ID"], what


def test_a_wrong_key_is_counted_once_toward_the_limit(keyed):
    app, _ = keyed
    client = app.test_client()
    wrong = bearer("wrong-0123456789abcdefghijklmnop")
    for _ in range(10):  # the default limit: 10 failures a minute
        assert client.post(PATH, json={"query": "x"}, headers=wrong).status_code == 401
    assert client.post(PATH, json={"query": "x"}, headers=wrong).status_code == 429
    # Throttled: the right key is not tried either, in the lane as in Flask.
    assert client.post(PATH, json={"query": "x"}, headers=bearer()).status_code == 429


def test_lane_answers_are_in_the_metrics(keyed):
    app, _ = keyed
    client = app.test_client()
    before = lane_of(app).answered
    for _ in range(3):
        assert client.post(PATH, json={"query": "pods"}, headers=bearer()).status_code == 200
    assert lane_of(app).answered == before + 3
    text = client.get("/metrics", headers=bearer()).get_data(as_text=True)
    route = 'route="/v1/collections/<string:name>/search",status="200"'
    counts = [line for line in text.splitlines() if line.startswith("swapline_http_request_seconds_count")
              and route in line]
    assert counts and float(counts[0].rsplit(" ", 1)[1]) >= 3, counts
    assert any(line.startswith('swapline_search_seconds_count{cache="miss",collection="docs"}') for line in
               text.splitlines())


def test_without_keys_the_lane_answers_loopback_hosts_only(settings, make_app):
    settings = settings.with_(search_cache_size=0)
    version = built(settings)
    app = make_app(settings)  # no keys: open, loopback hosts only
    served(app, version, {})
    fast, full, answered = both(app, {"query": "pods"}, {"Host": "localhost:8000"})
    assert answered and fast.status_code == 200
    same(fast, full)
    fast, full, answered = both(app, {"query": "pods"}, {"Host": "rebound.example"})
    assert not answered and fast.status_code == full.status_code == 403
    assert fast.json["code"] == "host_refused"


def test_plain_bodies_load_as_the_schema_loads_them():
    plain, schema = PlainBody(SearchQuerySchema()), SearchQuerySchema()
    for body in [{"query": "x"}, {"query": "x", "k": 7, "mode": "hybrid", "version": 2, "group_by": "document",
                                  "max_tokens": 10, "filter": {"type": {"in": ["md", "py"]}}},
                 {"query": "x", "mode": None, "filter": None, "group_by": None, "max_tokens": None}]:
        assert plain(body) == schema.load(body)
    for body in [{}, {"k": 1}, {"query": 1}, {"query": "x", "k": "1"}, {"query": "x", "k": -1},
                 {"query": "x", "group_by": "chunk"}, {"query": "x", "filter": []}, {"query": "x", "max_tokens": 0},
                 {"query": "x", "version": True}, "x", None]:
        assert plain(body) is None, body


def test_a_field_the_plain_loader_does_not_know_is_refused_when_built():
    from marshmallow import Schema, fields

    class Wider(Schema):
        query = fields.String()
        ratio = fields.Float()
        k = fields.Integer()  # not strict: "3" would load as 3

    with pytest.raises(TypeError, match=r"\['ratio', 'k'\]"):
        PlainBody(Wider())
