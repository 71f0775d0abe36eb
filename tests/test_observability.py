"""Events over SSE, collection status, versions and rollback, the search cache and /metrics, on the
session's redis-server with real worker and API processes."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared import keys
from tests.support import create_collection, ingest, ingest_and_rebuild, search, wait_for, wait_job

pytestmark = pytest.mark.integration


def corpus(n, offset=0, tag="alpha"):
    return [{"id": f"doc-{i}", "text": f"# Section {i % 9}\nThe {tag} document {i} talks about item{i}.",
             "metadata": {"source": f"notes/doc-{i}.md"}} for i in range(offset, offset + n)]


class SSEReader:
    """Reads SSE frames from a streaming response, one event (dict) at a time."""

    def __init__(self, resp):
        self.resp = resp
        self.lines = resp.iter_lines(decode_unicode=True)

    def next_event(self):
        frame = {}
        for line in self.lines:
            if line == "":
                if "data" in frame and frame.get("event") != "gap":
                    return frame
                frame = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            frame[field] = value
        return None


def test_sse_resume_with_last_event_id_misses_nothing(settings, procs, rclient):
    slow = settings.with_(build_step=16, build_step_delay=0.03, progress_every=16, sse_heartbeat_seconds=0.5)
    base = procs.api(slow)
    procs.worker(slow)
    create_collection(base)
    stream = requests.get(f"{base}/v1/events", params={"collection": "docs"}, stream=True, timeout=30)
    assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    reader = SSEReader(stream)
    job = ingest(base, corpus(400))

    seen = []
    # Read until the rebuild's build stage is under way, then drop the connection mid-rebuild.
    while True:
        event = reader.next_event()
        assert event is not None
        seen.append(event)
        data = json.loads(event["data"])
        if event["event"] == "job.progress" and data["kind"] == "rebuild" and data["data"]["stage"] == "build" \
                and data["data"]["done"] > 0:
            break
    stream.close()
    last_id = seen[-1]["id"]

    resumed = requests.get(f"{base}/v1/events", params={"collection": "docs"},
                           headers={"Last-Event-ID": last_id}, stream=True, timeout=30)
    reader = SSEReader(resumed)
    rebuild_id = wait_job(base, job["id"])["result"]["rebuild_job_id"]
    while True:
        event = reader.next_event()
        assert event is not None
        seen.append(event)
        if event["event"] == "job.succeeded" and json.loads(event["data"])["job_id"] == rebuild_id:
            break
    resumed.close()

    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    stored = [entry_id for entry_id, fields in rclient.xrange(keys.events(), min=ids[0], max=ids[-1])
              if fields["collection"] == "docs"]
    assert ids == stored, "the resumed stream skipped or reordered events"
    types = {e["event"] for e in seen}
    assert {"job.started", "job.progress", "job.succeeded", "index.published"} <= types


def test_status_tracks_ingest_rebuild_drift_and_replicas(settings, procs):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base)
    status = requests.get(f"{base}/v1/collections/docs").json()
    assert status["index"] is None and status["drift"] == 0 and status["running_job"] is None

    _, first = ingest_and_rebuild(base, corpus(30))
    v1 = first["result"]["version"]
    status = wait_for(lambda: (s := requests.get(f"{base}/v1/collections/docs").json())["converged"] and s,
                      message="replicas to converge on v1")
    assert status["documents"] == 30 and status["documents_at_rebuild"] == 30 and status["drift"] == 0
    assert status["index"]["version"] == v1 and status["index"]["by_type"] == {".md": {"documents": 30, "chunks": 30}}
    assert status["last_rebuild_at"] and status["lock"] is None and list(status["replicas"].values()) == [v1]

    # More ingest without a rebuild: the served index drifts behind the documents.
    wait_job(base, ingest(base, corpus(5, offset=30) + corpus(2, tag="beta"), rebuild=False)["id"])
    status = requests.get(f"{base}/v1/collections/docs").json()
    assert status["documents"] == 35 and status["documents_at_rebuild"] == 30 and status["drift"] == 7

    rebuild = requests.post(f"{base}/v1/collections/docs/rebuild").json()
    assert wait_job(base, rebuild["id"])["state"] == "succeeded"
    status = wait_for(lambda: (s := requests.get(f"{base}/v1/collections/docs").json())["converged"] and s,
                      message="replicas to converge on v2")
    assert status["drift"] == 0 and status["documents_at_rebuild"] == 35 and status["index"]["version"] > v1


def test_status_shows_running_job_with_eta_and_lock(settings, procs):
    slow = settings.with_(build_step=8, build_step_delay=0.05)
    base = procs.api(slow)
    procs.worker(slow)
    create_collection(base)
    job = wait_job(base, ingest(base, corpus(300), rebuild=False)["id"])
    assert job["state"] == "succeeded"
    rebuild = requests.post(f"{base}/v1/collections/docs/rebuild").json()

    def building():
        s = requests.get(f"{base}/v1/collections/docs").json()
        running = s["running_job"]
        if running and running["progress"]["stage"] == "build" and running["progress"]["eta_seconds"]:
            return s
    status = wait_for(building, message="a running rebuild with an ETA")
    assert status["running_job"]["id"] == rebuild["id"] and status["lock"]["job_id"] == rebuild["id"]
    assert status["lock"]["since"] and status["running_job"]["progress"]["total"] == 300
    assert wait_job(base, rebuild["id"])["state"] == "succeeded"


def test_rollback_swaps_every_api_process_back(settings, procs):
    base1 = procs.api(settings, name="api1")
    base2 = procs.api(settings, name="api2")
    procs.worker(settings)
    create_collection(base1)
    v1 = ingest_and_rebuild(base1, corpus(10, tag="alpha"))[1]["result"]["version"]
    v2 = ingest_and_rebuild(base1, corpus(10, tag="omega"))[1]["result"]["version"]
    for base in (base1, base2):
        wait_for(lambda b=base: search(b, "omega document").json()["index_version"] == v2)
    versions = requests.get(f"{base1}/v1/collections/docs/versions").json()["versions"]
    assert [v["version"] for v in versions] == [v2, v1] and versions[0]["current"] and versions[1]["on_disk"]

    resp = requests.post(f"{base1}/v1/collections/docs/rollback", json={"version": v1})
    assert resp.status_code == 200, resp.text
    for base in (base1, base2):
        wait_for(lambda b=base: search(b, "omega document").json()["index_version"] == v1,
                 message=f"{base} to serve v{v1} again")
        top = search(base, "alpha document item3").json()["hits"][0]
        assert "alpha" in top["text"]
    assert requests.post(f"{base1}/v1/collections/docs/rollback", json={"version": v1}).status_code == 409
    assert requests.post(f"{base1}/v1/collections/docs/rollback", json={"version": 999}).status_code == 404
    current = requests.get(f"{base2}/v1/collections/docs").json()
    assert current["index"]["version"] == v1


def test_search_cache_is_dropped_on_swap(settings, procs):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base)
    v1 = ingest_and_rebuild(base, corpus(10))[1]["result"]["version"]
    wait_for(lambda: search(base, "item4").json()["index_version"] == v1)
    again = search(base, "item4")
    assert again.headers["X-Cache"] == "hit" and again.json()["index_version"] == v1
    replaced = [{"id": "doc-4", "text": "Replaced text about item4 and lemons."}]
    v2 = ingest_and_rebuild(base, replaced)[1]["result"]["version"]
    fresh = wait_for(lambda: (r := search(base, "item4")).json()["index_version"] == v2 and r)
    assert fresh.headers["X-Cache"] == "miss" and fresh.json()["hits"][0]["text"].startswith("Replaced")
    # Where the server's time went: the embedding and the rest, measured on a miss, none on a hit.
    parts = (part.strip().split(";dur=") for part in fresh.headers["Server-Timing"].split(","))
    timing = {name: float(dur) for name, dur in parts}
    assert set(timing) == {"embed", "search", "app"} and timing["embed"] > 0 and timing["search"] > 0
    # `app`: the whole request inside the application, the route's parts included.
    assert timing["app"] + 0.01 >= timing["embed"] + timing["search"]  # each rounded to 0.01 ms
    assert again.headers["Server-Timing"].startswith("embed;dur=0.00, search;dur=0.00, app;dur=")
    # Every answer says how long the application held it, errors too.
    for answer in (requests.get(f"{base}/healthz", timeout=10),
                   requests.get(f"{base}/v1/collections/nosuch", timeout=10)):
        assert re.fullmatch(r"app;dur=\d+\.\d\d", answer.headers["Server-Timing"]), answer.headers


def test_metrics_expose_the_named_series(settings, procs):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base)
    version = ingest_and_rebuild(base, corpus(12))[1]["result"]["version"]
    wait_for(lambda: search(base, "item1").json()["index_version"] == version)
    text = requests.get(f"{base}/metrics").text
    search_route = "/v1/collections/<string:name>/search"
    for series in (f'swapline_http_request_seconds_count{{method="POST",route="{search_route}",status="200"}}',
                   'swapline_search_seconds_count{cache="miss",collection="docs"}',
                   'swapline_jobs{kind="ingest",state="succeeded"} 1.0',
                   'swapline_jobs{kind="rebuild",state="succeeded"} 1.0',
                   'swapline_queue_jobs{queue="ingest"} 0.0', 'swapline_queue_messages{queue="index"}',
                   'swapline_index_version{collection="docs",replica="',
                   f'swapline_index_published_version{{collection="docs"}} {float(version)}',
                   'swapline_index_vectors{collection="docs"} 12.0', "swapline_index_swaps_total 1.0",
                   "swapline_index_load_seconds_count 1.0",
                   'swapline_chunks_embedded_total{collection="docs"} 12.0',
                   'swapline_embed_seconds_total{collection="docs"} '):
        assert series in text, series
    # Prometheus naming: counters end in _total, durations in _seconds, no unit-less rates.
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("swapline_")]
    assert {f.name for f in ours if f.type == "counter"} >= {
        "swapline_chunks_embedded", "swapline_embed_seconds", "swapline_index_swaps", "swapline_index_load_errors"}
    for family in ours:
        assert "rate" not in family.name, family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


def test_metrics_sum_every_gunicorn_worker(settings, procs):
    # Two worker processes behind one port: whichever answers /metrics, it reports the requests and
    # swaps of both (prometheus_client's multiprocess mode, set up by webapp/api/gunicorn_conf.py).
    base = procs.api(settings, workers=2)
    procs.worker(settings)
    create_collection(base)
    version = ingest_and_rebuild(base, corpus(5))[1]["result"]["version"]
    wait_for(lambda: len([line for line in requests.get(f"{base}/metrics").text.splitlines()
                          if line.startswith('swapline_index_version{collection="docs"')
                          and line.endswith(f" {float(version)}")]) == 2,
             message="both gunicorn workers to serve the version")
    searches = 40
    for i in range(searches):
        assert search(base, f"item{i % 5} number {i}").status_code == 200
    route = "/v1/collections/<string:name>/search"
    count = f'swapline_http_request_seconds_count{{method="POST",route="{route}",status="200"}}'
    # Each process swapped once: only a sum over both reads 2. Several scrapes, answered by either
    # worker, all see every search.
    for _ in range(4):
        text = requests.get(f"{base}/metrics").text
        line = next(line for line in text.splitlines() if line.startswith(count))
        assert float(line.split()[-1]) == searches
        assert "swapline_index_swaps_total 2.0" in text


def test_old_versions_are_collected_but_never_while_served(settings, procs, rclient):
    keep2 = settings.with_(versions_keep=2)
    base = procs.api(keep2)
    procs.worker(keep2)
    create_collection(base)
    versions = [ingest_and_rebuild(base, corpus(3, tag=f"t{i}"))[1]["result"]["version"] for i in range(4)]
    index_dir = keep2.data_dir / "indexes" / "docs"
    on_disk = lambda: sorted(int(p.name[1:]) for p in index_dir.iterdir() if p.name.startswith("v"))  # noqa: E731
    wait_for(lambda: on_disk() == versions[-2:], message="versions beyond the last 2 to be collected")
    assert requests.get(f"{base}/v1/collections/docs/versions").json()["versions"][0]["version"] == versions[-1]


def test_event_streams_are_bounded_and_a_gone_client_frees_its_slot(settings, procs):
    bounded = settings.with_(sse_max_streams=2, sse_heartbeat_seconds=0.2, sse_max_seconds=2.0)
    base = procs.api(bounded)
    first = requests.get(f"{base}/v1/events", stream=True, timeout=10)
    second = requests.get(f"{base}/v1/events", stream=True, timeout=10)
    assert first.status_code == second.status_code == 200
    third = requests.get(f"{base}/v1/events", stream=True, timeout=10)
    assert third.status_code == 503 and third.headers["Retry-After"] == "5"
    assert third.json()["code"] == "unavailable"
    # A client that goes away frees its slot at the next heartbeat write.
    first.close()
    wait_for(lambda: (r := requests.get(f"{base}/v1/events", stream=True, timeout=10)).status_code == 200
             and (r.close() or True), timeout=10, message="a freed stream slot")
    # A stream ends by itself after sse_max_seconds; the client would reconnect with Last-Event-ID.
    started = time.monotonic()
    body = b"".join(second.iter_content(chunk_size=None))
    assert time.monotonic() - started < 5 and b": keepalive" in body
