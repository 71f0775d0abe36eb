"""The rebuild lease with fencing numbers, rebuild coalescing, and the fenced publish script."""

from __future__ import annotations

import json

import pytest

from shared import keys
from shared.jobstates import CANCELED, FAILED, RUNNING, SUCCEEDED
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.locks import LeaseLost, RebuildLocks
from shared.store.pointers import Pointers, PublishRefused
from tests.support import held_lease, wait_for

JOB_A, JOB_B = "a" * 32, "b" * 32


@pytest.fixture
def locks(client) -> RebuildLocks:
    return RebuildLocks(client, ttl_seconds=30)


@pytest.fixture
def jobs(client) -> JobStore:
    return JobStore(client, Settings.events_max_len)


@pytest.fixture
def pointers(client) -> Pointers:
    return Pointers(client, history_len=3, events_max_len=1000)


# Lease and fences

def test_acquire_hands_out_increasing_fences(locks):
    fences = []
    for _ in range(3):
        lease = locks.acquire("docs", JOB_A)
        assert lease is not None and lease.collection == "docs" and lease.job_id == JOB_A
        fences.append(lease.fence)
        assert locks.release(lease)
    lease = locks.acquire("docs", JOB_B)
    fences.append(lease.fence)
    assert fences == sorted(set(fences)) and fences[0] >= 1
    # Fences are per collection.
    assert locks.acquire("other", JOB_A).fence == 1


def test_second_job_is_refused_while_held(locks):
    lease = locks.acquire("docs", JOB_A)
    assert locks.acquire("docs", JOB_B) is None
    holder = locks.holder("docs")
    assert holder["job_id"] == JOB_A and holder["fence"] == lease.fence
    assert 0 < holder["expires_in_ms"] <= 30_000
    assert locks.release(lease)
    assert locks.holder("docs") is None
    assert locks.acquire("docs", JOB_B).fence == lease.fence + 1


def test_same_job_reacquiring_fences_off_its_earlier_run(locks):
    first = locks.acquire("docs", JOB_A)
    again = locks.acquire("docs", JOB_A)  # a redelivered message of the same job
    assert again is not None and again.fence > first.fence
    with pytest.raises(LeaseLost):
        locks.renew(first)
    assert not locks.release(first)  # the earlier run cannot free the newer run's lease
    assert locks.holder("docs")["fence"] == again.fence
    locks.renew(again)
    assert locks.release(again)


def test_renew_extends_a_held_lease(client):
    locks = RebuildLocks(client, ttl_seconds=30)
    lease = locks.acquire("docs", JOB_A)
    client.pexpire(keys.lock("docs"), 500)
    locks.renew(lease)
    assert client.pttl(keys.lock("docs")) > 20_000


def test_renew_after_expiry_or_takeover_raises_lease_lost(client):
    short = RebuildLocks(client, ttl_seconds=0.05)
    lease = short.acquire("docs", JOB_A)
    wait_for(lambda: short.holder("docs") is None, timeout=5, interval=0.01, message="the lease to expire")
    with pytest.raises(LeaseLost):
        short.renew(lease)
    taker = RebuildLocks(client, ttl_seconds=30).acquire("docs", JOB_B)
    assert taker is not None and taker.fence > lease.fence
    with pytest.raises(LeaseLost):
        short.renew(lease)
    assert not short.release(lease)  # release only by the holder
    assert short.holder("docs")["job_id"] == JOB_B


# Coalescing

def test_claim_coalesce_joins_the_pending_rebuild(locks):
    assert locks.claim_rebuild("docs", JOB_A, exclusive=False) == (True, JOB_A)
    assert locks.pending("docs") == JOB_A
    assert locks.claim_rebuild("docs", JOB_B, exclusive=False) == (False, JOB_A)
    assert locks.pending("docs") == JOB_A


def test_claim_coalesce_queues_one_behind_a_running_rebuild(locks):
    running = locks.acquire("docs", JOB_A)
    assert locks.claim_rebuild("docs", JOB_B, exclusive=False) == (True, JOB_B)
    assert locks.claim_rebuild("docs", "c" * 32, exclusive=False) == (False, JOB_B)
    assert locks.release(running)


def test_claim_exclusive_is_refused_when_queued_or_running(locks):
    assert locks.claim_rebuild("docs", JOB_A, exclusive=False)[0]
    assert locks.claim_rebuild("docs", JOB_B, exclusive=True) == (False, JOB_A)
    locks.clear_pending("docs", JOB_A)
    running = locks.acquire("docs", JOB_A)
    assert locks.claim_rebuild("docs", JOB_B, exclusive=True) == (False, JOB_A)
    assert locks.pending("docs") is None
    locks.release(running)
    assert locks.claim_rebuild("docs", JOB_B, exclusive=True) == (True, JOB_B)


def test_clear_pending_only_frees_its_own_slot(locks):
    locks.claim_rebuild("docs", JOB_A, exclusive=False)
    locks.clear_pending("docs", JOB_B)
    assert locks.pending("docs") == JOB_A
    locks.clear_pending("docs", JOB_A)
    assert locks.pending("docs") is None


# Fenced publish

def running_rebuild(jobs: JobStore) -> str:
    job_id = jobs.create("rebuild", "docs")["id"]
    assert jobs.start(job_id)
    return job_id


def pointer(version: int) -> dict:
    return {"version": version, "path": f"indexes/docs/v{version}", "vectors": 10 * version, "dim": 8,
            "model": "hash-8", "kind": "flat-ip", "built_at": 1700000000.5, "documents": version, "changes": 0}


def test_publish_sets_pointer_history_and_job(pointers, jobs, client):
    job_id = running_rebuild(jobs)
    pointers.publish(held_lease(client, "docs", job_id, 5), pointer(5), job_id, {"version": 5, "vectors": 50})
    live = pointers.get("docs")
    assert live["version"] == 5 and live["fence"] == 5 and live["vectors"] == 50 and live["dim"] == 8
    assert live["path"] == "indexes/docs/v5" and live["collection"] == "docs"
    assert live["built_at"] == pytest.approx(1700000000.5) and live["published_at"] > 0
    assert [h["version"] for h in pointers.history("docs")] == [5]
    job = jobs.get(job_id)
    assert job["state"] == SUCCEEDED and job["result"] == {"version": 5, "vectors": 50}
    types = [(fields["type"], fields["job_id"]) for _, fields in client.xrange(keys.events())]
    assert sorted(types[-2:]) == [("index.published", job_id), ("job.succeeded", job_id)]  # order is free
    assert client.hget(keys.collection("docs"), "last_rebuild_at") is not None
    assert pointers.get_many(["docs", "missing"]) == {"docs": live}


@pytest.mark.parametrize("delta", [-1, 0])
def test_publish_with_lower_or_equal_fence_is_stale(pointers, jobs, client, delta):
    pointers.publish(held_lease(client, "docs", "r" * 32, 7), pointer(7))
    job_id = running_rebuild(jobs)
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(held_lease(client, "docs", job_id, 7 + delta), pointer(7 + delta), job_id,
                         {"version": 7 + delta})
    assert refused.value.reason == "stale"
    assert pointers.get("docs")["version"] == 7
    assert len(pointers.history("docs")) == 1
    assert jobs.state(job_id) == RUNNING  # a refused publish does not finish the job


@pytest.mark.parametrize("end", [SUCCEEDED, FAILED, CANCELED])
def test_publish_refused_when_job_not_running(pointers, jobs, client, end):
    job_id = running_rebuild(jobs)
    assert jobs.transition(job_id, end)[0]
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(held_lease(client, "docs", job_id, 1), pointer(1), job_id, {})
    assert refused.value.reason == f"state:{end}"
    assert pointers.get("docs") is None and pointers.history("docs") == []
    assert jobs.state(job_id) == end


def test_publish_refused_for_queued_or_unknown_job(pointers, jobs, client):
    queued = jobs.create("rebuild", "docs")["id"]
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(held_lease(client, "docs", queued, 1), pointer(1), queued, {})
    assert refused.value.reason == "state:queued"
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(held_lease(client, "docs", "f" * 32, 1), pointer(1), "f" * 32, {})
    assert refused.value.reason.startswith("state:")
    assert pointers.get("docs") is None


def test_publish_refused_when_cancel_requested(pointers, jobs, client):
    job_id = running_rebuild(jobs)
    assert jobs.request_cancel(job_id) == RUNNING
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(held_lease(client, "docs", job_id, 1), pointer(1), job_id, {})
    assert refused.value.reason == "canceled"
    assert pointers.get("docs") is None
    assert jobs.state(job_id) == RUNNING


def test_history_is_trimmed_newest_first(pointers, client):
    for version in range(1, 6):
        pointers.publish(held_lease(client, "docs", "r" * 32, version), pointer(version))
    assert [h["version"] for h in pointers.history("docs")] == [5, 4, 3]  # history_len=3
    assert pointers.get("docs")["version"] == 5


@pytest.mark.integration
def test_publish_announces_on_swap_channel(rclient):
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.swap_channel())
    wait_for(lambda: rclient.pubsub_numsub(keys.swap_channel())[0][1] == 1, timeout=5,
             message="the subscription to register")
    jobs = JobStore(rclient, Settings.events_max_len)
    job_id = running_rebuild(jobs)
    Pointers(rclient, history_len=3, events_max_len=1000).publish(held_lease(rclient, "docs", job_id, 4), pointer(4),
                                                          job_id, {"version": 4})
    message = wait_for(lambda: pubsub.get_message(timeout=0.1), timeout=5, message="the swap message")
    assert message["channel"] == keys.swap_channel()
    assert json.loads(message["data"]) == {"collection": "docs", "version": 4}
    # A refused publish announces nothing.
    with pytest.raises(PublishRefused):
        Pointers(rclient, history_len=3, events_max_len=1000).publish(held_lease(rclient, "docs", "r" * 32, 3),
                                                              pointer(3))
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()


def test_publish_refused_when_the_lease_moved_on(pointers, jobs, locks, client):
    """A worker paused past its lease holds a fence above the published one, but another run took the
    lease over: its publish is refused whether the newer run has published yet or not."""
    first = locks.acquire("docs", "r" * 32)
    pointers.publish(first, pointer(first.fence))
    locks.release(first)
    job_id = running_rebuild(jobs)
    paused = locks.acquire("docs", job_id)
    client.delete(keys.lock("docs"))  # its lease expired while it was stopped
    taker = locks.acquire("docs", job_id)  # the job, sent again, runs on another worker
    assert taker.fence > paused.fence > pointers.get("docs")["fence"]
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(paused, pointer(paused.fence), job_id, {})
    assert refused.value.reason == "lease"
    assert pointers.get("docs")["fence"] == first.fence and jobs.state(job_id) == RUNNING
    pointers.publish(taker, pointer(taker.fence), job_id, {"version": taker.fence})
    with pytest.raises(PublishRefused) as refused:
        pointers.publish(paused, pointer(paused.fence), job_id, {})
    assert refused.value.reason == "lease"
    assert pointers.get("docs")["fence"] == taker.fence and jobs.state(job_id) == SUCCEEDED
    # Without any lease (released, or never taken) nothing publishes.
    assert locks.release(taker)
    with pytest.raises(PublishRefused):
        pointers.publish(taker, pointer(taker.fence + 1))
