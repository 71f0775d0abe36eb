"""Bounded job history and the sweeper: domain code on the session's redis-server, and the
`swapline.sweep` task on a real worker re-sending jobs whose message was lost."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import requests

from shared import keys, tasknames
from shared.celeryconfig import make_celery
from shared.jobs.submit import submit_documents
from shared.jobs.sweep import remove_orphan_restores, requeue_lost, sweep
from shared.jobstates import SUCCEEDED
from tests.support import create_collection, held_lease, make_services, wait_for, wait_job

pytestmark = pytest.mark.integration


@pytest.fixture
def sent():
    return []


@pytest.fixture
def svc(settings, sent):
    services = make_services(settings.with_(sweep_stale_seconds=60), enqueued=sent)
    yield services
    services.redis.close()


def finish(svc, job_id, ago: float = 0.0):
    assert svc.jobs.start(job_id)
    assert svc.jobs.succeed(job_id, {})
    if ago:
        svc.redis.hset(keys.job(job_id), "finished_at", time.time() - ago)


def test_cleanup_expires_old_finished_jobs_and_keeps_the_newest_per_collection(svc, rclient):
    day = 24 * 3600
    a = [svc.jobs.create("ingest", "a")["id"] for _ in range(5)]
    b = [svc.jobs.create("ingest", "b")["id"] for _ in range(2)]
    for job_id in a[:4] + b:
        finish(svc, job_id)
    # Nothing is old yet.
    assert svc.history.cleanup(ttl_seconds=day, keep_per_collection=2) == 0
    # A week later: of "a", the two newest stay (a[4] is queued, a[3] finished) and queued a[4] is never
    # deleted anyway; all of "b" is within its newest two.
    deleted = svc.history.cleanup(ttl_seconds=day, keep_per_collection=2, now=time.time() + 7 * day)
    assert deleted == 3
    for job_id in a[:3]:
        assert not rclient.exists(keys.job(job_id))
        assert rclient.zscore(keys.jobs(), job_id) is None
        assert rclient.zscore(keys.collection_jobs("a"), job_id) is None
    assert [j["id"] for j in svc.history.list(collection="a")[0]] == [a[4], a[3]]
    assert [j["id"] for j in svc.history.list(collection="b")[0]] == b[::-1]
    # A queued job is never deleted, however old and whatever the keep count.
    assert svc.history.cleanup(ttl_seconds=day, keep_per_collection=0, now=time.time() + 30 * day) == 3
    assert [j["id"] for j in svc.history.list()[0]] == [a[4]]


def test_cleanup_keeps_jobs_that_finished_recently(svc):
    job_id = svc.jobs.create("rebuild", "a")["id"]
    svc.redis.zadd(keys.jobs(), {job_id: time.time() - 10 * 24 * 3600})  # created long ago...
    finish(svc, job_id)  # ...finished just now
    assert svc.history.cleanup(ttl_seconds=24 * 3600, keep_per_collection=0) == 0
    finish_old = svc.jobs.create("rebuild", "a")["id"]
    finish(svc, finish_old, ago=3 * 24 * 3600)
    svc.redis.zadd(keys.jobs(), {finish_old: time.time() - 4 * 24 * 3600})
    assert svc.history.cleanup(ttl_seconds=24 * 3600, keep_per_collection=0) == 1


def _message(job_id: str, task: str = tasknames.INGEST) -> str:
    body = base64.b64encode(json.dumps([[job_id], {}, {}]).encode()).decode()
    return json.dumps({"body": body, "headers": {"task": task, "id": job_id, "argsrepr": f"['{job_id}']"},
                       "properties": {"delivery_tag": f"tag-{job_id}"}})


def held_unacked(rclient, job_id: str, task: str, queue: str, delivered_at: float) -> None:
    """What kombu writes when it hands a message to a worker that has not acked it yet."""
    rclient.hset("unacked", f"tag-{job_id}", json.dumps([json.loads(_message(job_id, task)), queue, queue]))
    rclient.zadd("unacked_index", {f"tag-{job_id}": delivered_at})


def test_requeue_only_jobs_whose_message_is_lost(svc, sent, rclient):
    old = time.time() + 3600  # "now" an hour ahead: every job is past the stale threshold
    lost = svc.jobs.create("ingest", "docs")["id"]  # created, never enqueued (the API died)
    waiting = svc.jobs.create("ingest", "docs")["id"]
    rclient.lpush("ingest", _message(waiting))  # still in the broker's queue list
    taken = svc.jobs.create("rebuild", "docs")["id"]  # delivered long ago, never started: its worker dropped it
    held_unacked(rclient, taken, tasknames.REBUILD, "index", time.time() - 7200)
    fresh = svc.jobs.create("rebuild", "other")["id"]  # taken by a worker a moment ago
    held_unacked(rclient, fresh, tasknames.REBUILD, "index", old)

    stale_running = svc.jobs.create("ingest", "docs")["id"]
    assert svc.jobs.start(stale_running)  # its worker died: no message anywhere, heartbeat old
    dead_worker = svc.jobs.create("ingest", "docs")["id"]
    assert svc.jobs.start(dead_worker)  # its worker died holding the message unacked
    held_unacked(rclient, dead_worker, tasknames.INGEST, "ingest", time.time() - 7200)
    leased = svc.jobs.create("rebuild", "leased")["id"]
    assert svc.jobs.start(leased)
    assert svc.locks.acquire("leased", leased)  # its lease is alive: its worker is alive too
    finished = svc.jobs.create("rebuild", "done")["id"]
    assert svc.jobs.start(finished)
    # The publish script finishes the job outside the transition script.
    svc.pointers.publish(held_lease(rclient, "done", finished, 5), {"version": 5, "path": "x"}, finished, {})
    assert rclient.sismember(keys.running(), finished)

    requeued = requeue_lost(svc, now=old, recheck_delay=0.01)
    assert sorted(requeued) == sorted([lost, taken, stale_running, dead_worker])
    assert sorted(sent) == sorted([("ingest", lost), ("rebuild", taken), ("ingest", stale_running),
                                   ("ingest", dead_worker)])
    # The old deliveries will not come back later; a queued job delivered a moment ago is left alone.
    assert not rclient.hexists("unacked", f"tag-{dead_worker}") and not rclient.hexists("unacked", f"tag-{taken}")
    assert rclient.hexists("unacked", f"tag-{fresh}")
    assert rclient.hget(keys.job(lost), "requeues") == "1"
    assert not rclient.sismember(keys.running(), finished)  # pruned: the publish script finished it
    # The heartbeat was refreshed: the next sweep leaves them alone for another stale period.
    sent.clear()
    assert requeue_lost(svc, recheck_delay=0.01) == [] and sent == []


def test_sweep_removes_orphaned_staging_and_is_exclusive(svc, rclient):
    old = time.time() - 3600
    live = submit_documents(svc, "docs", [{"id": "a", "text": "x"}], rebuild=False)["id"]
    done = submit_documents(svc, "docs", [{"id": "a", "text": "x"}], rebuild=False)["id"]
    finish(svc, done)
    orphan = "f" * 32
    svc.storage.write_staging(orphan, [{"id": "a", "text": "x"}])
    staging = svc.storage.root / "staging"
    for name in os.listdir(staging):
        os.utime(staging / name, (old, old))
    result = sweep(svc, recheck_delay=0.01)
    assert result["staging_removed"] == 2
    assert sorted(os.listdir(staging)) == [f"{live}.jsonl"]
    rclient.set(keys.sweep_lock(), "someone")
    assert sweep(svc) == {"skipped": True}


def test_sweep_removes_what_killed_restores_and_snapshots_left_but_not_a_running_one(svc):
    restoring = svc.storage.restoring_dir()
    left = svc.storage.temp_dir(restoring, "restore-old")
    (left / "segments").mkdir()
    running = svc.storage.temp_dir(restoring, "restore-new")
    old = time.time() - svc.settings.task_time_limit - 60
    os.utime(left, (old, old))
    snapshots = svc.storage.root / "snapshots" / "docs"
    snapshots.mkdir(parents=True)
    partial = snapshots / ".tmp-20261206T000000Z-0a0a0a0a.tar"
    orphan_sidecar = snapshots / "20261206T000000Z-0b0b0b0b.json"  # its archive was never renamed into place
    kept_tar, kept_sidecar = snapshots / "20261206T000000Z-0c0c0c0c.tar", snapshots / "20261206T000000Z-0c0c0c0c.json"
    for path in (partial, orphan_sidecar, kept_tar, kept_sidecar):
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    assert remove_orphan_restores(svc) == 3
    assert not left.exists() and running.is_dir()
    assert sorted(p.name for p in snapshots.iterdir()) == [kept_sidecar.name, kept_tar.name]


def test_sweep_task_on_a_worker_resends_a_lost_job(settings, procs, rclient):
    fast = settings.with_(sweep_stale_seconds=1)
    base = procs.api(fast)
    create_collection(base, "docs")
    svc = make_services(fast)  # enqueue goes nowhere: lost
    lost = submit_documents(svc, "docs", [{"id": "a", "text": "# A\nsome text"}], rebuild=False)["id"]
    rclient.hset(keys.job(lost), "heartbeat", time.time() - 120)  # older than the lease: lost
    procs.worker(fast)
    assert requests.get(f"{base}/v1/jobs/{lost}").json()["state"] == "queued"
    celery = make_celery(fast)
    celery.send_task(tasknames.SWEEP, queue=tasknames.QUEUE_INDEX)
    job = wait_job(base, lost)
    assert job["state"] == SUCCEEDED and rclient.hget(keys.job(lost), "requeues") == "1"
    wait_for(lambda: "event=sweep.done" in (procs.log_dir / "worker-w1.log").read_text(),
             message="the sweep's log line")
    svc.redis.close()
