"""Chaos on workers, at the default lease (60 s): killed pool children and whole workers, a worker
paused past its lease, a visibility timeout shorter than a build, SIGTERM then SIGKILL as `docker stop`
does, cancel mid-build, and a burst of rebuild requests. Real `celery worker` processes, an API
process, and a redis-server each test owns."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import requests

from shared import keys
from tests.chaos.conftest import (
    SearchLoad,
    job,
    published,
    publishes,
    rebuild,
    serving,
    stage_documents,
    wait_building,
)
from tests.support import create_collection, pool_children, wait_for, wait_job

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(text: str, marker: str) -> list[float]:
    """Epoch times of the worker's log lines holding `marker` (shared.logs' text format: "2026-01-02
    03:04:05,678 INFO logger message")."""
    out = []
    for line in text.splitlines():
        stamp = STAMP.match(line)
        if marker in line and stamp:
            out.append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def test_1_pool_child_killed_mid_build_is_retried_and_publishes_once(cfg, procs, rdb):
    base = procs.api(cfg)
    worker = procs.worker(cfg)
    create_collection(base)
    stage_documents(base, 300)
    job_id = rebuild(base)
    wait_building(base, job_id)
    children = pool_children(worker)
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    # The worker sees its pool process die and hands the message back (reject on worker lost); the same
    # worker runs it again at once: the lost run's process is gone from this host, so no need to wait.
    done = wait_job(base, job_id, timeout=cfg.lock_ttl_seconds * 2)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert publishes(rdb) == [done["result"]["version"]]
    assert worker.alive()


@pytest.mark.parametrize("with_beat", [False, True], ids=["without-beat", "with-beat"])
def test_2_worker_killed_mid_build_is_recovered_within_twice_the_lease(cfg, procs, rdb, with_beat):
    base = procs.api(cfg)
    first = procs.worker(cfg, name="w1")
    if with_beat:
        procs.beat(cfg)
    create_collection(base)
    stage_documents(base, 300, "alpha")
    v1 = published(base)
    wait_for(lambda: serving(base) == v1, message="the API to serve v1")
    stage_documents(base, 100, "beta")
    load = SearchLoad(base, threads=2)
    job_id = rebuild(base)
    wait_building(base, job_id)
    os.killpg(first.popen.pid, signal.SIGKILL)
    first.popen.wait(10)
    killed_at = time.time()
    second = procs.worker(cfg, name="w2")
    done = wait_job(base, job_id, timeout=cfg.lock_ttl_seconds * 2 + 30)
    recovered_in = time.time() - killed_at
    assert done["state"] == "succeeded", done
    assert recovered_in <= 2 * cfg.lock_ttl_seconds, f"recovered {recovered_in:.0f}s after the kill"
    v2 = done["result"]["version"]
    wait_for(lambda: serving(base) == v2, message="the API to serve v2")
    load.stop()
    # The API answered every search throughout, from v1 until it swapped to v2.
    assert not load.errors, load.errors[:3]
    assert load.answers and all(status == 200 for status, _, _ in load.answers)
    assert {version for _, version, _ in load.answers} <= {v1, v2}
    assert publishes(rdb) == [v1, v2]
    # Never two builds at once: the second worker began building only after the first was dead.
    starts = log_times(second.log(), f"event=rebuild.building job={job_id}")
    assert starts and min(starts) >= killed_at - 1
    assert done["attempts"] == 2


@pytest.mark.parametrize("resume", ["before-publish", "after-publish"])
def test_3_worker_paused_past_its_lease_never_publishes(cfg, procs, rdb, resume):
    paced = cfg.with_(build_step_delay=0.1)  # ~7 s of build, so the other worker is caught mid-build
    base = procs.api(paced)
    paused = procs.worker(paced, name="paused")
    create_collection(base)
    stage_documents(base, 600)
    job_id = rebuild(base)
    wait_building(base, job_id)
    token = rdb.get(keys.lock("docs"))
    assert token.startswith(job_id)
    paused_fence = int(token.split("|")[1])
    os.killpg(paused.popen.pid, signal.SIGSTOP)
    try:
        other = procs.worker(paced, name="other")
        if resume == "before-publish":
            # Once the lease ran out, the other worker's recovery check sends the job again and it takes
            # the lease with a higher fence; resume the paused worker while that build runs.
            wait_for(lambda: (t := rdb.get(keys.lock("docs"))) and int(t.split("|")[1]) > paused_fence
                     and job(base, job_id)["progress"]["stage"] in ("merge", "build"),
                     timeout=paced.lock_ttl_seconds * 2 + 30, interval=0.05, message="the other worker to build")
            os.killpg(paused.popen.pid, signal.SIGCONT)
            done = wait_job(base, job_id, timeout=120)
        else:
            done = wait_job(base, job_id, timeout=paced.lock_ttl_seconds * 2 + 60)
            os.killpg(paused.popen.pid, signal.SIGCONT)
    finally:
        os.killpg(paused.popen.pid, signal.SIGCONT)
    assert done["state"] == "succeeded", done
    version = done["result"]["version"]
    assert version > paused_fence
    # The resumed worker finds its lease gone at its next renewal and leaves the job alone.
    wait_for(lambda: "event=task.superseded" in paused.log(), timeout=60, message="the paused run to stand down")
    assert f"event=rebuild.published job={job_id}" not in paused.log()
    assert f"event=rebuild.published job={job_id}" in other.log()
    fences = publishes(rdb)
    assert fences == [version] and fences == sorted(fences)
    assert job(base, job_id)["state"] == "succeeded"  # not failed by the stale run
    assert int(rdb.hget(keys.pointer("docs"), "fence")) == version


def test_7_concurrent_rebuild_requests_build_once(cfg, procs, rdb):
    # A build of several seconds (~7 s), so every request comes while it runs: a build of 100 rows took
    # 1.2 s, and on a busy machine the last requests came after it, when a new rebuild is rightly taken.
    slow = cfg.with_(build_step_delay=0.1)
    base = procs.api(slow)
    procs.worker(slow)
    create_collection(base)
    stage_documents(base, 600)

    def ask(_):
        return requests.post(f"{base}/v1/collections/docs/rebuild", timeout=60)

    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(ask, range(100)))
    accepted = [a.json() for a in answers if a.status_code == 202]
    refused = [a.json() for a in answers if a.status_code == 409]
    assert len(accepted) == 1 and len(refused) == 99, [a.status_code for a in answers]
    assert {r["job_id"] for r in refused} == {accepted[0]["id"]}
    assert all(r["code"] == "rebuild_in_progress" for r in refused)
    done = wait_job(base, accepted[0]["id"], timeout=120)
    assert done["state"] == "succeeded"
    assert publishes(rdb) == [done["result"]["version"]]


def test_8_duplicate_delivery_past_the_visibility_timeout_builds_nothing(cfg, procs, rdb):
    short = cfg.with_(visibility_timeout_seconds=2, build_step_delay=0.1)  # a ~7 s build
    base = procs.api(short)
    workers = [procs.worker(short, name="w1"), procs.worker(short, name="w2")]
    create_collection(base)
    stage_documents(base, 600)
    job_id = rebuild(base)
    done = wait_job(base, job_id, timeout=120)
    assert done["state"] == "succeeded", done
    logs = "".join(w.log() for w in workers)
    # Redis handed the unacked message out again while the build ran; that delivery did nothing.
    assert f"event=task.duplicate job={job_id}" in logs
    assert logs.count(f"event=rebuild.building job={job_id}") == 1
    assert publishes(rdb) == [done["result"]["version"]]
    assert done["attempts"] == 1


def test_9_sigterm_then_sigkill_and_cancel_mid_build(cfg, procs, rdb):
    paced = cfg.with_(build_step_delay=0.1)  # 1200 vectors: ~15 s of build, longer than docker's 10 s
    base = procs.api(paced)
    first = procs.worker(paced, name="w1")
    create_collection(base)
    stage_documents(base, 600, "alpha")
    stage_documents(base, 600, "beta")
    job_id = rebuild(base)
    wait_building(base, job_id)
    second = procs.worker(paced, name="w2")
    os.killpg(first.popen.pid, signal.SIGTERM)  # docker stop: SIGTERM, then SIGKILL after 10 s
    try:
        first.popen.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
    killed_at = time.time()
    done = wait_job(base, job_id, timeout=paced.lock_ttl_seconds * 2 + 60)
    assert done["state"] == "succeeded", done
    if f"event=rebuild.published job={job_id}" not in first.log():
        assert time.time() - killed_at <= 2 * paced.lock_ttl_seconds + 15  # the last build's own time
        assert f"event=rebuild.published job={job_id}" in second.log()
    assert publishes(rdb) == [done["result"]["version"]]

    # Cancel mid-build: canceled at the next step boundary, nothing published. New documents give the
    # (incremental) build rows to add: with nothing new it would add none and finish at once.
    before = publishes(rdb)
    stage_documents(base, 600, "gamma")
    job_id = rebuild(base)
    wait_building(base, job_id)
    mark = rdb.xrevrange(keys.events(), count=1)[0][0]
    resp = requests.post(f"{base}/v1/jobs/{job_id}/cancel", timeout=10)
    assert resp.status_code == 202 and resp.json()["cancel_requested"]
    done = wait_job(base, job_id, timeout=60)
    assert done["state"] == "canceled", done
    steps_after = [f for _, f in rdb.xrange(keys.events(), min=f"({mark}") if f["job_id"] == job_id
                   and f["type"] == "job.progress" and '"stage": "build"' in f["data"]]
    assert len(steps_after) <= 1, steps_after
    assert publishes(rdb) == before
    assert rdb.get(keys.lock("docs")) is None
    leftovers = [p.name for p in (paced.data_dir / "indexes" / "docs").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
