"""The job state machine (shared/jobs.py + lua/transition.lua) on fakeredis and on the session's real
redis-server, and the throttling of progress writes."""

from __future__ import annotations

import json
import threading
import time
import types

import pytest
import redis

from shared import keys
from shared.jobs.progress import ProgressReporter
from shared.jobstates import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobNotFound
from shared.store.events import EventLog, entry
from shared.store.jobs import JobStore
from shared.store.pointers import Pointers
from shared.tasknames import QUEUE_INDEX, QUEUE_INGEST
from tests.support import held_lease


@pytest.fixture
def jobs(client) -> JobStore:
    return JobStore(client, events_max_len=1000)


def events(client, job_id: str | None = None) -> list[dict]:
    entries = [fields for _, fields in client.xrange(keys.events())]
    return [e for e in entries if job_id is None or e["job_id"] == job_id]


def running_job(jobs: JobStore, kind: str = "rebuild") -> str:
    job_id = jobs.create(kind, "docs")["id"]
    assert jobs.start(job_id)
    return job_id


def test_create_is_queued_with_event_and_indexes(jobs, client):
    job = jobs.create("ingest", "docs", {"rebuild": False})
    assert job["state"] == QUEUED and job["kind"] == "ingest" and job["collection"] == "docs"
    assert job["progress"] == {"stage": "queued", "done": 0, "total": 0}
    assert job["created_at"].endswith("Z") and job["started_at"] is None and job["result"] is None
    assert jobs.options(job["id"]) == {"rebuild": False}
    assert [(e["type"], e["state"], e["kind"], e["collection"]) for e in events(client, job["id"])] == [
        ("job.queued", QUEUED, "ingest", "docs")]
    assert client.zscore(keys.jobs(), job["id"]) is not None
    assert client.zscore(keys.collection_jobs("docs"), job["id"]) is not None
    assert jobs.queued_depth(QUEUE_INGEST) == 1 and jobs.queued_depth(QUEUE_INDEX) == 0


def test_unknown_job_raises_not_found(jobs):
    with pytest.raises(JobNotFound):
        jobs.get("0" * 32)
    with pytest.raises(JobNotFound):
        jobs.request_cancel("0" * 32)
    assert jobs.transition("0" * 32, RUNNING) == (False, "")


@pytest.mark.parametrize("path", [
    [RUNNING, SUCCEEDED],
    [RUNNING, FAILED],
    [RUNNING, CANCELED],
    [CANCELED],
])
def test_each_legal_transition_happens_once(jobs, client, path):
    job_id = jobs.create("ingest", "docs")["id"]
    previous = QUEUED
    for state in path:
        assert jobs.transition(job_id, state) == (True, previous)
        # The same transition again is refused and names the state the job is in now.
        assert jobs.transition(job_id, state) == (False, state)
        assert jobs.state(job_id) == state
        previous = state
    types_seen = [e["type"] for e in events(client, job_id)]
    expected = ["job.queued"] + [{"running": "job.started", "succeeded": "job.succeeded", "failed": "job.failed",
                                  "canceled": "job.canceled"}[s] for s in path]
    assert types_seen == expected  # one event per transition that happened, none for refusals


@pytest.mark.parametrize("setup, target", [
    ([], SUCCEEDED),
    ([], FAILED),
    ([], QUEUED),
    ([RUNNING], QUEUED),
    ([RUNNING, SUCCEEDED], RUNNING),
    ([RUNNING, SUCCEEDED], FAILED),
    ([RUNNING, SUCCEEDED], CANCELED),
    ([CANCELED], RUNNING),
    ([CANCELED], SUCCEEDED),
    ([RUNNING, FAILED], SUCCEEDED),
    ([RUNNING, FAILED], RUNNING),
    ([RUNNING, CANCELED], SUCCEEDED),
])
def test_illegal_transitions_are_refused(jobs, client, setup, target):
    job_id = jobs.create("ingest", "docs")["id"]
    for state in setup:
        assert jobs.transition(job_id, state)[0]
    current = jobs.state(job_id)
    before = len(events(client, job_id))
    assert jobs.transition(job_id, target, error="should not be written") == (False, current)
    assert jobs.state(job_id) == current
    assert "error" not in jobs.raw(job_id) or jobs.raw(job_id)["error"] != "should not be written"
    assert len(events(client, job_id)) == before


def test_helpers_record_fields_and_results(jobs, client):
    job_id = running_job(jobs)
    job = jobs.get(job_id)
    assert job["state"] == RUNNING and job["started_at"] is not None and job["progress"]["stage"] == "starting"
    assert jobs.start(job_id)  # a redelivered message resumes a running job
    assert jobs.succeed(job_id, {"version": 3})
    assert not jobs.fail(job_id, "too late")
    job = jobs.get(job_id)
    assert job["state"] == SUCCEEDED and job["result"] == {"version": 3} and job["error"] is None
    assert job["finished_at"] is not None
    assert json.loads(events(client, job_id)[-1]["data"]) == {"result": {"version": 3}}
    assert not jobs.start(job_id)

    failed = running_job(jobs)
    assert jobs.fail(failed, "boom")
    assert jobs.get(failed)["error"] == "boom" and jobs.get(failed)["state"] == FAILED


def test_request_cancel_on_queued_cancels_at_once(jobs):
    job_id = jobs.create("rebuild", "docs")["id"]
    assert jobs.request_cancel(job_id) == CANCELED
    job = jobs.get(job_id)
    assert job["state"] == CANCELED and job["finished_at"] is not None
    assert not jobs.start(job_id)  # a worker that picks it up later does not run it


def test_request_cancel_on_running_only_sets_the_flag(jobs, client):
    job_id = running_job(jobs)
    assert not jobs.cancel_requested(job_id)
    assert jobs.request_cancel(job_id) == RUNNING
    # Still running: the worker sees the flag at its next step and records the cancel itself.
    assert jobs.state(job_id) == RUNNING
    assert jobs.cancel_requested(job_id)
    assert [e["type"] for e in events(client, job_id)] == ["job.queued", "job.started"]
    assert jobs.cancel(job_id)
    assert jobs.state(job_id) == CANCELED


@pytest.mark.parametrize("end", [SUCCEEDED, FAILED, CANCELED])
def test_request_cancel_on_terminal_returns_the_state(jobs, end):
    job_id = running_job(jobs)
    assert jobs.transition(job_id, end)[0]
    assert jobs.request_cancel(job_id) == end
    assert jobs.state(job_id) == end
    assert not jobs.cancel_requested(job_id)


@pytest.mark.parametrize("leave", [RUNNING, CANCELED])
def test_queued_depth_drops_when_job_leaves_queued(jobs, leave):
    ingest = [jobs.create("ingest", "docs")["id"] for _ in range(3)]
    rebuild = jobs.create("rebuild", "docs")["id"]
    assert jobs.queued_depth(QUEUE_INGEST) == 3 and jobs.queued_depth(QUEUE_INDEX) == 1
    assert jobs.transition(ingest[0], leave)[0]
    assert jobs.queued_depth(QUEUE_INGEST) == 2 and jobs.queued_depth(QUEUE_INDEX) == 1
    assert jobs.request_cancel(rebuild) == CANCELED
    assert jobs.queued_depth(QUEUE_INDEX) == 0
    # A refused transition leaves the queued set alone.
    assert not jobs.transition(ingest[1], SUCCEEDED)[0]
    assert jobs.queued_depth(QUEUE_INGEST) == 2


@pytest.mark.integration
def test_concurrent_starts_move_the_job_exactly_once(redis_url):
    """Many clients race queued -> running on the real server: one transition, one event."""
    setup = redis.Redis.from_url(redis_url, decode_responses=True)
    job_id = JobStore(setup, 1000).create("ingest", "docs")["id"]
    results: list[tuple[bool, str]] = []
    barrier = threading.Barrier(8)

    def race():
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = JobStore(client, 1000)
        barrier.wait()
        results.append(store.transition(job_id, RUNNING))
        client.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [(False, RUNNING)] * 7 + [(True, QUEUED)]
    assert [e["type"] for e in events(setup, job_id)] == ["job.queued", "job.started"]
    setup.close()


def test_progress_updates_hash_and_stream(jobs, client):
    job_id = running_job(jobs)
    jobs.progress(job_id, "embed", 5, 10, rate=2.345)
    job = jobs.get(job_id)
    assert job["progress"] == {"stage": "embed", "done": 5, "total": 10}
    last = events(client, job_id)[-1]
    assert last["type"] == "job.progress" and last["collection"] == "docs"
    assert json.loads(last["data"]) == {"stage": "embed", "done": 5, "total": 10, "rate": 2.35}


# ProgressReporter throttling, on a fake clock so the test needs no sleeps.

class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("shared.jobs.progress.time", types.SimpleNamespace(monotonic=fake.monotonic, time=time.time))
    return fake


def progress_done(client, job_id) -> list[int]:
    return [json.loads(e["data"])["done"] for e in events(client, job_id) if e["type"] == "job.progress"]


def test_progress_reporter_writes_every_n_items(jobs, client, clock):
    job_id = running_job(jobs, "ingest")
    reporter = ProgressReporter(jobs, job_id, "embed", total=100, every=10, interval=60.0)
    for done in range(1, 36):
        clock.now += 0.01
        reporter.update(done)
    assert progress_done(client, job_id) == [0, 10, 20, 30]
    clock.now += 1
    assert reporter.finish() == pytest.approx(clock.now - 1000.0)
    assert progress_done(client, job_id) == [0, 10, 20, 30, 100]
    assert jobs.get(job_id)["progress"] == {"stage": "embed", "done": 100, "total": 100}


def test_progress_reporter_writes_every_interval(jobs, client, clock):
    job_id = running_job(jobs, "ingest")
    reporter = ProgressReporter(jobs, job_id, "build", total=1000, every=1000, interval=1.0)
    reporter.update(1)
    clock.now += 0.5
    reporter.update(2)
    assert progress_done(client, job_id) == [0]  # neither enough items nor enough time yet
    clock.now += 0.5
    reporter.update(3)
    clock.now += 0.2
    reporter.update(4)
    clock.now += 1.0
    reporter.update(5)
    assert progress_done(client, job_id) == [0, 3, 5]
    rate = json.loads(events(client, job_id)[-1]["data"])["rate"]
    assert rate == pytest.approx(5 / 2.2, abs=0.01)


def test_progress_reporter_force_and_minimum_every(jobs, client, clock):
    job_id = running_job(jobs, "ingest")
    reporter = ProgressReporter(jobs, job_id, "embed", total=3, every=0, interval=60.0)
    reporter.update(1)
    reporter.update(1, force=True)
    reporter.update(2)
    assert progress_done(client, job_id) == [0, 1, 1, 2]  # every=0 behaves as every item


def test_every_writer_gives_events_the_same_shape(jobs, client):
    # Lua writers (create, transitions, publish) use lib/events.lua; Python writers use entry().
    job_id = running_job(jobs)
    jobs.progress(job_id, "build", 1, 2)
    Pointers(client, history_len=3, events_max_len=1000).publish(held_lease(client, "docs", job_id, 1), {"version": 1},
                                                         job_id, {"ok": True})
    EventLog(client, 1000).append("index.swapped", collection="docs", data={"version": 1})
    written = events(client)
    assert [e["type"] for e in written] == ["job.queued", "job.started", "job.progress", "index.published",
                                           "job.succeeded", "index.swapped"]
    assert all(set(e) == set(entry("any")) for e in written)


def test_work_counters_only_grow_per_collection(client):
    from shared.store.counters import WorkCounters

    counters = WorkCounters(client)
    assert counters.embedded() == {}
    counters.add_embedded("docs", 10, 0.5)
    counters.add_embedded("docs", 5, 0.25)
    counters.add_embedded("keps", 0, 0.0)
    assert counters.embedded() == {"docs": (15, 0.75), "keps": (0, 0.0)}
