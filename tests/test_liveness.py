"""Liveness of running jobs (keepalive, duplicate deliveries, attempts) and housekeeping, on fakeredis
and the session's redis-server."""

from __future__ import annotations

import os
import socket
import time

import pytest

from shared import keys
from shared.jobs.housekeeping import Housekeeper
from shared.jobs.liveness import Keepalive, another_run_is_live, runner_id
from shared.settings import Settings
from tests.support import make_services


@pytest.fixture
def svc(client, tmp_path):
    services = make_services(Settings(data_dir=tmp_path, lock_ttl_seconds=60), client)
    yield services


def running(svc, kind: str = "rebuild") -> str:
    job_id = svc.jobs.create(kind, "docs")["id"]
    assert svc.jobs.start(job_id)
    return job_id


def test_keepalive_refreshes_heartbeats_and_held_leases(svc, client):
    job_id = running(svc)
    lease = svc.locks.acquire("docs", job_id)
    client.hset(keys.job(job_id), "heartbeat", 1.0)
    client.pexpire(keys.lock("docs"), 500)
    keepalive = Keepalive(svc)
    with keepalive.working_on(job_id):
        keepalive.beat()
    assert float(client.hget(keys.job(job_id), "heartbeat")) > time.time() - 5
    assert client.pttl(keys.lock("docs")) > 50_000
    # A lease taken over is reported lost and no longer renewed.
    client.set(keys.lock("docs"), f"{job_id}|{lease.fence + 1}")
    assert svc.locks.renew_held() == [lease] and svc.locks.held() == []
    # A finished job's hash is left alone, a deleted one is not re-created.
    client.delete(keys.job(job_id))
    with keepalive.working_on(job_id):
        keepalive.beat()
    assert not client.exists(keys.job(job_id))


def test_attempts_count_the_runs_lost_with_their_worker(svc, client):
    job_id = running(svc, "ingest")
    assert svc.jobs.begin_attempt(job_id, "host:1") == (1, 0)
    svc.jobs.end_attempt(job_id, "host:1")
    assert svc.jobs.begin_attempt(job_id, "host:2") == (2, 0)  # the first ended: nothing lost
    assert svc.jobs.begin_attempt(job_id, "host:3") == (3, 1)  # the second never ended: lost
    assert svc.jobs.begin_attempt(job_id, "host:4", ended_meanwhile=1) == (4, 1)
    assert svc.jobs.get(job_id)["attempts"] == 4
    assert svc.jobs.begin_attempt("f" * 32, "host:1") == (0, 0)
    assert not client.exists(keys.job("f" * 32))


def test_a_delivery_is_a_duplicate_only_while_another_run_lives(svc, client):
    job_id = running(svc)
    me = runner_id()
    assert not another_run_is_live(svc, job_id, me)  # nobody runs it
    # Another process on another host, heard from just now: a duplicate.
    svc.jobs.begin_attempt(job_id, "elsewhere:123")
    assert another_run_is_live(svc, job_id, me)
    # Silent for a whole lease: its worker is gone, take over.
    client.hset(keys.job(job_id), "heartbeat", time.time() - 61)
    assert not another_run_is_live(svc, job_id, me)
    # On this host, a dead process is known dead at once, however fresh its heartbeat.
    client.hset(keys.job(job_id), "heartbeat", time.time())
    dead = _dead_pid()
    svc.jobs.begin_attempt(job_id, f"{socket.gethostname()}:{dead}")
    assert not another_run_is_live(svc, job_id, me)
    svc.jobs.begin_attempt(job_id, f"{socket.gethostname()}:{os.getppid()}")
    assert another_run_is_live(svc, job_id, me)
    # A run that ended cleanly (a retry after a busy lock) is no one's: the next delivery runs it.
    svc.jobs.end_attempt(job_id, f"{socket.gethostname()}:{os.getppid()}")
    assert not another_run_is_live(svc, job_id, me)
    # Our own earlier run (a retry in the same process) is never a duplicate of itself.
    svc.jobs.begin_attempt(job_id, me)
    assert not another_run_is_live(svc, job_id, me)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_housekeeper_runs_each_piece_on_its_clock(svc, client, monkeypatch):
    calls = []
    keeper = Housekeeper(svc)
    keeper.pieces = [("a", 60.0, lambda s: calls.append("a")), ("b", 0.0, lambda s: calls.append("b"))]
    keeper.next_at = {"a": 0.0, "b": 0.0}
    keeper.run_due()
    keeper.run_due()
    assert calls == ["a", "b", "b"]
    # Redis down: the round stops and the next one comes after a growing pause.
    import redis

    def down(s):
        raise redis.ConnectionError("down")
    keeper.pieces = [("c", 1.0, down)]
    keeper.next_at = {"c": 0.0}
    assert keeper.run_due() == 1.0
    assert keeper.run_due() == 2.0


@pytest.mark.integration
def test_a_job_lost_too_often_fails_naming_its_attempts(settings, procs, rclient):
    from tests.support import create_collection, wait_job

    base = procs.api(settings)
    create_collection(base)
    svc = make_services(settings)
    job_id = svc.jobs.create("rebuild", "docs")["id"]
    assert svc.jobs.start(job_id)
    for n in range(settings.job_max_attempts):  # three runs that died with their workers
        svc.jobs.begin_attempt(job_id, f"gone-host:{n}")
    rclient.hset(keys.job(job_id), "heartbeat", time.time() - 3600)
    procs.worker(settings)
    from shared.celeryconfig import enqueue, make_celery

    enqueue(make_celery(settings), "rebuild", job_id)
    done = wait_job(base, job_id)
    assert done["state"] == "failed" and done["error"].startswith("gave up after 3 attempts"), done
    svc.close()
