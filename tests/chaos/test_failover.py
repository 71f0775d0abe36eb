"""Chaos around Redis failover (issue 21): a primary, a replica and three Sentinels (tests/support.py
RedisHA), the primary SIGKILLed while ingests and rebuilds run, and a whole stack (two workers, two API
processes) that finds the new primary through the Sentinels. Acknowledged work survives, the published
index never goes back, searches never fail.

Each test prints its timings on lines starting `FAILOVER:` (`pytest -s` shows them) so they can be
quoted."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
import requests

from shared import keys
from shared.settings import Settings
from tests.chaos.conftest import SearchLoad, corpus, job, publishes
from tests.support import RedisHA, create_collection, ingest, wait_for, wait_job

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture
def ha(tmp_path):
    server = RedisHA(tmp_path / "redis-ha")
    yield server
    server.stop()
    print(server.logs())


def test_1_the_ha_set_fails_over_and_the_old_primary_rejoins_as_a_replica(ha):
    first = ha.primary()
    client = redis.Redis.from_url(ha.url(first), decode_responses=True)
    client.set("swapline:test:kept", "yes")
    assert client.wait(1, 5000) == 1  # the replica has it before the primary dies
    client.close()

    assert ha.kill_primary() == first
    took = ha.wait_promoted(timeout=60)
    second = ha.primary()
    assert second != first and ha.role(second)[0] == "master"
    print(f"FAILOVER: set only: kill -> promoted {took:.1f} s")
    client = redis.Redis.from_url(ha.url(second), decode_responses=True)
    assert client.get("swapline:test:kept") == "yes"
    client.close()

    rejoined = ha.restart_old_primary()
    assert ha.role(first) == ("slave", second, True)
    assert ha.primary() == second
    print(f"FAILOVER: set only: old primary restarted -> replica of the new one {rejoined:.1f} s")


class Submitter:
    """Submits ingest batches (with a rebuild) through the failover, one at a time, each with its own
    Idempotency-Key: a 503 (no primary: it must carry Retry-After) or a 409 (the key's claim still
    pending) is retried with the same key every 0.25 s until accepted. Stops after `batches` accepted."""

    def __init__(self, bases: list[str], batches: int):
        self.bases, self.batches = bases, batches
        self.accepted: list[tuple[str, str, float]] = []  # (tag, job id, when)
        self.refusals: dict[int, int] = {}
        self.errors: list[str] = []
        self.last = ""  # the last refusal, for a failing test's message
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for n in range(self.batches):
            tag, key = f"during{n}", str(uuid.uuid4())
            base = self.bases[n % len(self.bases)]
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    resp = requests.post(f"{base}/v1/collections/docs/documents",
                                         json={"documents": corpus(10, tag), "rebuild": True},
                                         headers={"Idempotency-Key": key}, timeout=30)
                except requests.RequestException as exc:
                    self.errors.append(f"{tag}: {exc!r}")
                    time.sleep(0.25)
                    continue
                if resp.status_code == 202:
                    self.accepted.append((tag, resp.json()["id"], time.monotonic()))
                    break
                self.refusals[resp.status_code] = self.refusals.get(resp.status_code, 0) + 1
                self.last = f"{resp.status_code} {resp.text[:300]}"
                if resp.status_code not in (503, 409) or not resp.headers.get("Retry-After"):
                    self.errors.append(f"{tag}: {resp.status_code} {resp.headers.get('Retry-After')} {resp.text[:200]}")
                time.sleep(0.25)
            else:
                self.errors.append(f"{tag}: never accepted")
            time.sleep(0.3)


def finished(bases: list[str], job_id: str, timeout: float) -> dict:
    """The job once terminal, asked of each API in turn (either may be the one that answers)."""
    def done():
        for base in bases:
            try:
                found = job(base, job_id)
            except (requests.RequestException, ValueError):
                continue
            if found.get("state") in TERMINAL:
                return found
        return None
    return wait_for(done, timeout=timeout, interval=0.25, message=f"job {job_id} to end")


def running(base: str) -> list[dict]:
    """The collection's running jobs (ingests and the rebuilds they asked for)."""
    resp = requests.get(f"{base}/v1/jobs", params={"collection": "docs", "state": "running"}, timeout=10)
    return resp.json()["jobs"]


def found(base: str, tag: str) -> bool:
    """A keyword search for the batch's tag finds one of its documents."""
    resp = requests.post(f"{base}/v1/collections/docs/search",
                         json={"query": f"{tag} document", "k": 5, "mode": "keyword"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return any(hit["doc_id"].startswith(f"{tag}-") for hit in resp.json()["hits"])


def test_2_primary_killed_mid_ingest_loses_no_acknowledged_work(ha, procs, tmp_path):
    """One replica, as the issue's operator ran it: the promoted primary has no replica until the old
    one rejoins, so acknowledged writes wait for the replicas that are connected (none) and the stack
    takes work again as soon as the promotion is seen."""
    cfg = Settings(
        redis_url=ha.url(), redis_sentinels=ha.sentinels, redis_min_replicas=1, data_dir=tmp_path / "data",
        embedder="hash", build_step=8, build_step_delay=0.05)
    workers = [procs.worker(cfg, name=name) for name in ("w1", "w2")]
    bases = [procs.api(cfg, name=name) for name in ("api1", "api2")]
    create_collection(bases[0])
    base_job = wait_job(bases[0], ingest(bases[0], corpus(200, "base"))["id"], timeout=120)
    assert base_job["state"] == "succeeded", base_job
    assert wait_job(bases[0], base_job["result"]["rebuild_job_id"], timeout=120)["state"] == "succeeded"
    for base in bases:
        wait_for(lambda b=base: found(b, "base"), timeout=60, message="both APIs to serve the base corpus")

    watches = [SearchLoad(base, threads=2) for base in bases]
    # A burst, more than two workers take at once: some run, some wait in the queue.
    burst = [(f"burst{i}", ingest(bases[i % 2], corpus(60, f"burst{i}"))["id"]) for i in range(6)]
    wait_for(lambda: running(bases[0]), timeout=60, interval=0.02,
             message="an ingest or a rebuild of the burst to be running")

    killed = ha.kill_primary()
    submitter = Submitter(bases, batches=4)
    promoted = ha.wait_promoted(timeout=90)
    print(f"FAILOVER: stack: kill -> promoted {promoted:.1f} s")
    submitter.thread.join(240)
    assert not submitter.thread.is_alive(), ("submissions still refused 240 s after the promotion", submitter.refusals,
                                             submitter.accepted, submitter.last, submitter.errors[-5:])
    assert not submitter.errors, submitter.errors[:5]
    accepting = submitter.accepted[0][2] - ha.killed_at
    print(f"FAILOVER: stack: kill -> promoted {promoted:.1f} s; kill -> first job accepted {accepting:.1f} s; "
          f"refusals meanwhile {submitter.refusals}")

    acknowledged = burst + [(tag, job_id) for tag, job_id, _ in submitter.accepted]
    rebuilds = []
    for tag, job_id in acknowledged:
        done = finished(bases, job_id, timeout=240)
        assert done["state"] == "succeeded", (tag, done)
        rebuilds.append(done["result"]["rebuild_job_id"])
    for rebuild_id in dict.fromkeys(rebuilds):
        done = finished(bases, rebuild_id, timeout=240)
        assert done["state"] == "succeeded", done
    for base in bases:
        for tag, _ in acknowledged:
            wait_for(lambda b=base, t=tag: found(b, t), timeout=60, message=f"{base} to find {tag}")
    for watch in watches:
        watch.stop()

    for watch in watches:
        assert not watch.errors, watch.errors[:5]
        failed = [(status, version) for status, version, _ in watch.answers if status != 200]
        assert not failed, f"{watch.base}: searches answered {failed[:5]}"
        assert len(watch.answers) > 20, "too few searches to mean anything"
        for thread in watch.by_thread:
            versions = [v for _, v in thread if v is not None]
            assert versions == sorted(versions), f"{watch.base} served an older version after a newer one"
    client = redis.Redis.from_url(ha.url(), decode_responses=True)
    fences = publishes(client)
    kinds = [fields["type"] for _, fields in client.xrange(keys.events())]
    pointer = client.hgetall(keys.pointer("docs"))
    client.close()
    assert fences == sorted(set(fences)), f"fences published twice or out of order: {fences}"
    seen = {v for watch in watches for _, v, _ in watch.answers if v is not None}
    assert seen <= set(fences), f"versions served but never published: {sorted(seen - set(fences))}"
    assert int(pointer["version"]) == fences[-1] == max(seen | {fences[-1]})
    assert "index.published" in kinds
    print(f"FAILOVER: stack: {len(acknowledged)} acknowledged ingests all succeeded; fences published {fences}")

    rejoined = ha.restart_old_primary()
    assert ha.role(killed)[:2] == ("slave", ha.primary())
    print(f"FAILOVER: stack: old primary back as a replica after {rejoined:.1f} s")
    assert all(w.alive() for w in workers)
