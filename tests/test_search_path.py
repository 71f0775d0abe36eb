"""The search path in one process: the search answer written directly equals the schema's dump, the
per-process catalog of collections (bounded look-ups of unknown names), and the watcher keeping that
catalog from its syncs (fakeredis)."""

from __future__ import annotations

import json

import fakeredis
import numpy as np
import pytest
import redis

from shared.settings import Settings
from tests.support import make_services
from webapp.api.catalog import LOOKUPS_PER_SECOND, MISSING_TTL, Catalog
from webapp.api.live import IndexWatcher, LiveIndexes
from webapp.api.schemas.search import SearchResultSchema, search_body


def _hit(i: int, **extra) -> dict:
    return {"doc_id": f"d{i}", "chunk_id": f"d{i}:0", "score": np.float32(0.5 + i / 100), "text": f"text é {i}",
            "heading_path": ["A", "B"], "metadata": {"n": i, "tags": ["x"], "nested": {"k": None}},
            "vector_rank": np.int64(i + 1), "keyword_rank": None, "vector_score": np.float32(0.25),
            "keyword_score": None, "lines": [1, 3], **extra}


RESULTS = [
    {"index_version": 3, "mode": "vector", "scanned": 100, "matched_documents": None,
     "hits": [_hit(i) for i in range(5)]},
    {"index_version": None, "mode": "hybrid", "scanned": 0, "matched_documents": None, "hits": []},
    {"index_version": 7, "mode": "keyword", "scanned": np.int64(9), "matched_documents": 2,
     "hits": [_hit(0, stale=True), _hit(1, stale=None), _hit(2, internal="never shown")],
     "tokens": 40, "truncated": True, "not_a_field": 1},
    {"index_version": 2, "mode": "hybrid", "scanned": 10, "matched_documents": None, "group_by": "document",
     "hits": [{"doc_id": "d1", "score": 0.9, "heading_path": [], "metadata": {}, "vector_rank": 1,
               "keyword_rank": 2, "vector_score": 0.9, "keyword_score": 1.5,
               "passages": [{"text": "p", "start_line": None, "end_line": None, "score": np.float64(0.9),
                             "heading_path": ["H"], "chunk_ids": ["d1:0", "d1:1"], "extra": 1}]}]},
]


@pytest.mark.parametrize("result", RESULTS)
def test_search_body_is_the_schema_dump(result):
    assert json.loads(search_body(result)) == json.loads(json.dumps(SearchResultSchema().dump(result)))


def test_search_body_writes_what_orjson_refuses():
    # JSON has no integer limit and a client may store one past 64 bits in a document's metadata.
    result = {"index_version": 1, "mode": "vector", "scanned": 1, "matched_documents": None,
              "hits": [_hit(0, metadata={"big": 2**70, "text": "é"})]}
    assert json.loads(search_body(result))["hits"][0]["metadata"] == {"big": 2**70, "text": "é"}


def test_search_body_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError):
        search_body({"hits": [{"doc_id": "d", "metadata": {"x": object()}}]})


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    def __init__(self, existing: dict[str, str | None]):
        self.existing = existing
        self.asked: list[str] = []

    def __call__(self, name: str) -> tuple[bool, str | None]:
        self.asked.append(name)
        return (True, self.existing[name]) if name in self.existing else (False, None)


def test_known_collections_are_answered_from_memory():
    lookups = Lookups({})
    catalog = Catalog(lookups)
    catalog.replace({"a": None, "b": "keyword"})
    assert catalog.get("a") == (True, None) and catalog.get("b") == (True, "keyword")
    assert lookups.asked == []
    catalog.update("b", False, None)
    assert catalog.known("b") == (False, None) and catalog.names() == {"a"}


def test_a_read_older_than_a_later_write_cannot_undo_it():
    """A look-up or a full sync that read Redis before a drop (or a mode change) landed, but writes
    after it, is dropped for that name: the dropped collection stays gone, the new mode stays."""
    catalog = Catalog(Lookups({}))
    catalog.replace({"a": None, "b": None})
    lookup_began = catalog.mark()  # a look-up of "a" reads Redis: it still exists
    catalog.update("a", False, None, catalog.mark())  # meanwhile the drop's message lands
    catalog.update("a", True, None, lookup_began)  # then the look-up's stale answer
    assert catalog.known("a") == (False, None)
    sync_began = catalog.mark()  # a full sync reads every collection: b has no mode yet
    catalog.update("b", True, "keyword")  # this process's PATCH answers, then updates its catalog
    catalog.replace({"b": None}, sync_began)  # the sync lands with what it read before the PATCH
    assert catalog.known("b") == (True, "keyword") and catalog.known("a") == (False, None)
    catalog.replace({"b": "keyword"}, catalog.mark())  # a later sync is the word on every name again
    catalog.replace({"b": None, "c": None}, catalog.mark())
    assert catalog.known("b") == (True, None) and catalog.names() == {"b", "c"}


def test_an_unknown_name_is_looked_up_once_then_known_or_remembered_missing_briefly():
    clock, lookups = Clock(), Lookups({"new": "vector"})
    catalog = Catalog(lookups, clock=clock)
    assert catalog.get("new") == (True, "vector") and catalog.get("new") == (True, "vector")
    assert catalog.get("gone") == (False, None) and catalog.get("gone") == (False, None)
    assert lookups.asked == ["new", "gone"]
    clock.now += MISSING_TTL + 0.01
    assert catalog.get("gone") == (False, None)
    assert lookups.asked == ["new", "gone", "gone"]
    # Created meanwhile (the message about it): known at once, the missing answer forgotten.
    catalog.update("gone", True, None)
    assert catalog.get("gone") == (True, None) and len(lookups.asked) == 3


def test_a_flood_of_random_names_is_bounded_to_the_lookup_rate():
    clock, lookups = Clock(), Lookups({})
    catalog = Catalog(lookups, clock=clock)
    for second in range(3):
        for i in range(1000):
            assert catalog.get(f"random-{second}-{i}") == (False, None)
        clock.now += 1.0
    assert len(lookups.asked) <= LOOKUPS_PER_SECOND * 3 + 1
    assert len(lookups.asked) >= LOOKUPS_PER_SECOND * 2  # the rate refills: a new collection is still found


def test_a_failed_lookup_raises_and_remembers_nothing():
    def down(name):
        raise redis.ConnectionError("down")

    catalog = Catalog(down)
    with pytest.raises(redis.ConnectionError):
        catalog.get("x")
    assert catalog.names() == set()


@pytest.fixture
def watched(tmp_path):
    client = fakeredis.FakeRedis(decode_responses=True)
    settings = Settings(redis_url="redis://unused:1/0", data_dir=tmp_path / "data", embedder="hash")
    svc = make_services(settings, client)
    watcher = IndexWatcher(svc, LiveIndexes(0), warm_embedder=False)
    yield svc, watcher, client
    client.close()


def test_the_watcher_keeps_the_catalog_from_full_syncs_and_messages(watched):
    svc, watcher, client = watched
    pubsub = svc.pointers.subscribe()
    pubsub.get_message(timeout=1)
    svc.collections.create("a", "keyword")
    svc.collections.create("b")
    announced = [json.loads(m["data"]) for m in iter(lambda: pubsub.get_message(timeout=0.2), None)]
    assert announced == [{"collection": "a", "change": "created"}, {"collection": "b", "change": "created"}]
    watcher.sync()
    assert watcher.catalog.get("a") == (True, "keyword") and watcher.catalog.get("b") == (True, None)
    # A message names one collection: that one is read again.
    svc.collections.set_default_mode("b", "vector")
    watcher.sync(["b"])
    assert watcher.catalog.known("b") == (True, "vector")
    svc.collections.hide("a", "drop-job")
    assert json.loads(pubsub.get_message(timeout=1)["data"]) == {"collection": "b", "change": "changed"}
    assert json.loads(pubsub.get_message(timeout=1)["data"]) == {"collection": "a", "change": "dropped"}
    watcher.sync(["a"])
    assert watcher.catalog.known("a") == (False, None)
    # A lost message: the next full sync catches up.
    svc.collections.hide("b", "drop-job-2")
    watcher.sync()
    assert watcher.catalog.names() == set()
    pubsub.close()


WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/v1/collections/c/search
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   120.31ms   40.10ms 380.00ms   70.00%
  Latency Distribution
     50%  110.50ms
     75%  140.00ms
     90%  180.00ms
     99%    1.20s
  1070 requests in 10.01s, 3.10MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    106.89
Transfer/sec:    317.00KB
"""


def test_wrk_output_is_read():
    from tests.bench.concurrency import parse_wrk

    got = parse_wrk(WRK_OUTPUT)
    assert got == {"rps": 106.89, "p50": pytest.approx(0.1105), "p99": pytest.approx(1.2), "failed": 3}
    with pytest.raises(RuntimeError):
        parse_wrk("wrk: connection refused")


def test_profile_frames_are_counted_once_per_stack():
    from tests.bench.profile_search import top_frames

    raw = ("process 1;thread (0x1);a (m.py:1);b (m.py:2);a (m.py:1) 3\n"
           "thread (0x2);a (m.py:1);c (m.py:3) 1\nnot a line\n")
    own, total, samples = top_frames(raw, 5)
    assert samples == 4 and own == [("a (m.py:1)", 3), ("c (m.py:3)", 1)]
    assert dict(total) == {"a (m.py:1)": 4, "b (m.py:2)": 3, "c (m.py:3)": 1}
