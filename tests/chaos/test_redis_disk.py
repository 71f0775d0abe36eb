"""Chaos around the stack's dependencies: Redis restarted mid-job (no beat), and the data volume
filling up while a version is written."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from shared import keys
from tests.chaos.conftest import (
    SearchLoad,
    corpus,
    job,
    published,
    publishes,
    rebuild,
    serving,
    stage_documents,
    wait_building,
)
from tests.support import create_collection, ingest, post_documents, wait_for, wait_job

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


def test_4_redis_restart_mid_job_loses_nothing_and_searches_go_on(cfg, procs, rdb, own_redis):
    # A slower build (about 12 s for the 400 vectors) so the outage below surely meets it mid-build.
    cfg = cfg.with_(build_step_delay=0.25)
    api, base = procs.api_proc(cfg)
    worker = procs.worker(cfg)
    pids = (api.popen.pid, worker.popen.pid)
    create_collection(base)
    stage_documents(base, 300, "alpha")
    v1 = published(base)
    wait_for(lambda: serving(base) == v1, message="the API to serve v1")
    stage_documents(base, 100, "beta")
    rebuild_id = rebuild(base)
    wait_building(base, rebuild_id)
    # Queued behind the rebuild (one worker process), answered 202 before the outage.
    queued = [ingest(base, corpus(5, f"queued{i}"), rebuild=False)["id"] for i in range(3)]
    load = SearchLoad(base, threads=2)

    assert job(base, rebuild_id)["state"] == "running"  # the outage hits a job at work
    own_redis.stop()
    wait_for(lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 503, timeout=30,
             message="/readyz to say not ready while Redis is down")
    wait_for(lambda: any(h == "redis-unavailable" for _, _, h in load.answers[-10:]), timeout=30,
             message="searches answered from memory, marked degraded")
    # Submissions need Redis: refused in the error shape, nothing answered 202.
    refused = post_documents(base, corpus(1, "refused"), rebuild=False)
    assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
    # An outage longer than the client's own reconnect attempts: the running job meets it.
    wait_for(lambda: "event=task.redis_unavailable" in worker.log(), timeout=60,
             message="the running rebuild to meet the outage")
    own_redis.start()

    wait_for(lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 200, timeout=60,
             message="/readyz to say ready again, with no restart")
    for job_id in [rebuild_id, *queued]:
        done = wait_job(base, job_id, timeout=2 * cfg.lock_ttl_seconds + 60)
        assert done["state"] == "succeeded", done
    load.stop()
    assert not load.errors, load.errors[:3]
    assert all(status == 200 for status, _, _ in load.answers), {s for s, _, _ in load.answers}
    assert any(h == "redis-unavailable" for _, _, h in load.answers)
    assert (api.popen.pid, worker.popen.pid) == pids and api.alive() and worker.alive()
    assert publishes(rdb)[-1] == wait_job(base, rebuild_id)["result"]["version"]


def test_6_a_retry_a_worker_held_through_a_redis_restart_is_not_stranded(cfg, procs, rdb, own_redis):
    """A rebuild waiting out the lease (an ETA retry every 2 s, held by the worker between tries) when
    Redis restarts: the worker forgets what it held, the unacked copy stays in Redis, and kombu would
    bring it back only after the visibility timeout (70 min). The recovery check sends it again within
    about two leases, and it publishes."""
    cfg = cfg.with_(build_step_delay=0.3)  # the first rebuild holds the lease for about 15 s
    base = procs.api(cfg)
    worker = procs.worker(cfg, concurrency=2)
    create_collection(base)
    stage_documents(base, 300, "alpha")
    first = rebuild(base)
    wait_building(base, first)
    waiting = ingest(base, corpus(5, "late"), rebuild=True)["id"]
    pending = wait_job(base, waiting)["result"]["rebuild_job_id"]
    wait_for(lambda: "Retry in" in worker.log(), timeout=30, message="the pending rebuild to wait out the lease")
    assert job(base, pending)["state"] == "queued"
    own_redis.stop()
    own_redis.start()
    restarted = time.monotonic()
    assert wait_job(base, first, timeout=2 * cfg.lock_ttl_seconds + 60)["state"] == "succeeded"
    done = wait_job(base, pending, timeout=2 * cfg.lock_ttl_seconds + 90)
    assert done["state"] == "succeeded", done
    print(f"CHAOS: pending rebuild ended {time.monotonic() - restarted:.0f} s after the restart")
    assert publishes(rdb)[-1] == done["result"]["version"]


@pytest.fixture
def small_volume(tmp_path):
    """The data dir on an 8 MiB tmpfs of its own (this needs root, as on CI)."""
    path = tmp_path / "data"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(volume, leave: int) -> None:
    """Take all the volume's free space but `leave` bytes."""
    stat = os.statvfs(volume)
    free = stat.f_bavail * stat.f_frsize
    with open(volume / "filler", "wb") as fh:
        chunk = b"\0" * (1 << 20)
        remaining = max(0, free - leave)
        while remaining > 0:
            remaining -= fh.write(chunk[:remaining])


def test_5_disk_full_while_writing_a_version(small_volume, cfg, procs, rdb):
    base = procs.api(cfg)
    procs.worker(cfg)
    create_collection(base)
    stage_documents(base, 300, "alpha")
    v1 = published(base)
    stage_documents(base, 300, "beta")
    fill(small_volume, leave=256 * 1024)  # room for a small batch, not for a 600-vector version

    job_id = rebuild(base)
    done = wait_job(base, job_id, timeout=120)
    assert done["state"] == "failed" and done["retryable"], done
    assert "no space left on the data volume" in done["error"], done["error"]
    assert int(rdb.hget(keys.pointer("docs"), "version")) == v1  # pointer unchanged
    assert rdb.get(keys.lock("docs")) is None  # lease released
    assert publishes(rdb) == [v1]
    leftovers = [str(p.relative_to(small_volume)) for p in small_volume.rglob(".tmp-*")]
    assert leftovers == []
    indexes = small_volume / "indexes" / "docs"
    assert sorted(p.name for p in indexes.iterdir()) == ["parts", f"v{v1}"]
    assert [p.name for p in (indexes / "parts").iterdir()] == [f"p{v1}"]  # the failed build's part is gone
    assert serving(base) == v1

    # A batch that cannot be staged: 507 in the error shape, nothing created, nothing left behind.
    big = [{"id": f"big-{i}", "text": "x" * 100_000} for i in range(10)]
    resp = post_documents(base, big, rebuild=False)
    assert resp.status_code == 507, resp.text
    assert resp.json()["code"] == "insufficient_storage" and "no space left" in resp.json()["message"]
    assert resp.headers["Retry-After"]
    assert list((small_volume / "staging").glob(".tmp-*")) == []

    # Retryable indeed: with space again, the same request succeeds.
    (small_volume / "filler").unlink()
    done = wait_job(base, rebuild(base), timeout=120)
    assert done["state"] == "succeeded", done
