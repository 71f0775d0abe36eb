"""The job API on real parts (the session's redis-server, `celery worker` and gunicorn processes):
Idempotency-Key, back-pressure, listing with cursors, cancel of queued and running jobs."""

from __future__ import annotations

import json
import os
import threading
import uuid

import pytest
import requests

from shared import keys
from tests.support import create_collection, wait_for, wait_job

pytestmark = pytest.mark.integration

DOCS = [{"id": f"d{i}", "text": f"# Topic {i % 5}\nParagraph {i} about word{i} and theme{i % 3}."} for i in range(3)]




def submit(base, name="docs", docs=DOCS, rebuild=True, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return requests.post(f"{base}/v1/collections/{name}/documents", json={"documents": docs, "rebuild": rebuild},
                         headers=headers)


# Idempotency

def test_twenty_concurrent_identical_requests_create_one_job(settings, procs, rclient):
    base = procs.api(settings, threads=8)
    create_collection(base)
    key = str(uuid.uuid4())
    barrier = threading.Barrier(20)
    answers = []

    def send():
        barrier.wait()
        resp = submit(base, key=key)
        answers.append((resp.status_code, resp.headers.get("Idempotent-Replayed"), resp.json()))

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 20
    assert rclient.zcard(keys.jobs()) == 1  # exactly one job exists
    created = [a for a in answers if a[0] == 202 and a[1] is None]
    assert len(created) == 1, answers
    job_id = created[0][2]["id"]
    for status, replayed, body in answers:
        # The others were told to wait (still being accepted) or got the first answer again.
        assert (status == 409 and body["code"] == "idempotency_in_progress") or \
               (status == 202 and body["id"] == job_id), (status, replayed, body)
    assert len(os.listdir(settings.data_dir / "staging")) == 1


def test_replay_same_body_and_422_for_a_different_body(settings, procs, rclient):
    base = procs.api(settings)
    create_collection(base)
    create_collection(base, "other")
    first = submit(base, key="retry-me-1", rebuild=False)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    # The same JSON with other key order and spacing is the same request.
    again = requests.post(f"{base}/v1/collections/docs/documents", headers={"Idempotency-Key": "retry-me-1",
                          "Content-Type": "application/json"},
                          data='{"rebuild": false,   "documents": ' + json.dumps(DOCS) + "}")
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content and again.headers["Location"] == first.headers["Location"]
    different = submit(base, key="retry-me-1", docs=DOCS[:1], rebuild=False)
    assert different.status_code == 422 and different.json()["code"] == "idempotency_key_reused"
    # The key is per route: the same key on another collection is another request.
    elsewhere = submit(base, name="other", key="retry-me-1", rebuild=False)
    assert elsewhere.status_code == 202 and "Idempotent-Replayed" not in elsewhere.headers
    assert rclient.zcard(keys.jobs()) == 2
    # The record expires after idempotency_ttl_seconds.
    ttl = rclient.ttl(keys.idempotency("POST /v1/collections/docs/documents", "retry-me-1"))
    assert 0 < ttl <= settings.idempotency_ttl_seconds
    # Rebuild and delete honour the key too.
    r1 = requests.post(f"{base}/v1/collections/docs/rebuild", headers={"Idempotency-Key": "rb-1"})
    r2 = requests.post(f"{base}/v1/collections/docs/rebuild", headers={"Idempotency-Key": "rb-1"})
    assert r1.status_code == 202 and r2.status_code == 202 and r2.json()["id"] == r1.json()["id"]
    assert r2.headers["Idempotent-Replayed"] == "true"
    d1 = requests.delete(f"{base}/v1/collections/docs/documents/d1", headers={"Idempotency-Key": "del-1"})
    d2 = requests.delete(f"{base}/v1/collections/docs/documents/d1", headers={"Idempotency-Key": "del-1"})
    assert d1.status_code == 202 and d2.json()["id"] == d1.json()["id"] and d2.headers["Idempotent-Replayed"] == "true"


def test_a_refused_request_does_not_burn_the_key(settings, procs):
    base = procs.api(settings)
    missing = submit(base, name="nope", key="k-404")
    assert missing.status_code == 404
    create_collection(base, "nope")
    # The collection exists now: the same key goes through instead of replaying the 404.
    assert submit(base, name="nope", key="k-404").status_code == 202
    bad = requests.post(f"{base}/v1/collections/nope/rebuild", headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_idempotency_key"


# Back-pressure

def test_full_queue_answers_503_with_retry_after_and_creates_nothing(settings, procs, rclient):
    small = settings.with_(max_queued_ingest=2, max_queued_index=1)
    base = procs.api(small)
    create_collection(base)
    create_collection(base, "other")
    assert submit(base).status_code == 202
    assert submit(base).status_code == 202
    staged = sorted(os.listdir(small.data_dir / "staging"))
    full = submit(base, rebuild=False, key="after-full")
    assert full.status_code == 503 and full.headers["Retry-After"] == "5"
    assert full.json()["code"] == "queue_full" and full.json()["queue"] == "ingest"
    assert rclient.zcard(keys.jobs()) == 2 and sorted(os.listdir(small.data_dir / "staging")) == staged
    assert requests.delete(f"{base}/v1/collections/docs/documents/d0").status_code == 503  # same queue
    # The index queue has its own bound.
    queued_rebuild = requests.post(f"{base}/v1/collections/docs/rebuild")
    assert queued_rebuild.status_code == 202
    other = requests.post(f"{base}/v1/collections/other/rebuild")
    assert other.status_code == 503 and other.json()["queue"] == "index"
    assert rclient.get(keys.rebuild_pending("other")) is None  # the claimed slot was given back
    assert requests.delete(f"{base}/v1/collections/other").status_code == 503
    assert rclient.zcard(keys.jobs()) == 3

    # The rebuild an ingest asks for on the worker side is never refused, even past the bound: the
    # ingest workers drain the two queued ingests, each asks for a rebuild of "docs", which coalesce
    # into the one already queued.
    procs.worker(small, name="ingest", queues="ingest")
    ids = [j["id"] for j in requests.get(f"{base}/v1/jobs?kind=ingest").json()["jobs"]]
    results = [wait_job(base, i) for i in ids]
    assert all(r["state"] == "succeeded" for r in results)
    assert {r["result"]["rebuild_job_id"] for r in results} == {queued_rebuild.json()["id"]}
    # Once the queue drained, the same Idempotency-Key goes through (the 503 was not stored).
    assert submit(base, rebuild=False, key="after-full").status_code == 202


def test_ingest_rebuild_goes_past_a_full_index_queue(settings, procs, rclient):
    small = settings.with_(max_queued_index=1)
    base = procs.api(small)
    create_collection(base)
    create_collection(base, "other")
    assert requests.post(f"{base}/v1/collections/other/rebuild").status_code == 202  # index queue now full
    job = submit(base).json()
    procs.worker(small, name="ingest", queues="ingest")
    done = wait_job(base, job["id"])
    assert done["state"] == "succeeded" and done["result"]["rebuild_job_id"]
    assert rclient.scard(keys.queued("index")) == 2  # over the bound: accepted work is never lost
    procs.worker(small, name="index", queues="index")
    assert wait_job(base, done["result"]["rebuild_job_id"])["state"] == "succeeded"


# Listing

def test_listing_filters_and_cursor_paging(settings, procs):
    base = procs.api(settings)
    create_collection(base)
    create_collection(base, "other")
    made = []
    for _ in range(5):
        made.append(submit(base, rebuild=False).json()["id"])
    made.append(requests.post(f"{base}/v1/collections/docs/rebuild").json()["id"])
    made.append(submit(base, name="other", rebuild=False).json()["id"])
    canceled = made[1]
    assert requests.post(f"{base}/v1/jobs/{canceled}/cancel").status_code == 202

    everything = requests.get(f"{base}/v1/jobs").json()
    assert [j["id"] for j in everything["jobs"]] == made[::-1] and everything["next_cursor"] is None

    pages, cursor = [], None
    while True:
        params = {"collection": "docs", "limit": 2} | ({"cursor": cursor} if cursor else {})
        resp = requests.get(f"{base}/v1/jobs", params=params)
        assert resp.status_code == 200
        pages.append([j["id"] for j in resp.json()["jobs"]])
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == [made[5:3:-1], made[3:1:-1], made[1::-1]]

    def ids(**params):
        return [j["id"] for j in requests.get(f"{base}/v1/jobs", params=params).json()["jobs"]]

    assert ids(kind="rebuild") == [made[5]]
    assert ids(state="canceled") == [canceled]
    assert ids(collection="docs", kind="ingest", state="queued") == [made[4], made[3], made[2], made[0]]
    assert ids(collection="other") == [made[6]]
    assert ids(collection="nothing") == []
    # A filtered page with a cursor continues after it.
    first = requests.get(f"{base}/v1/jobs", params={"kind": "ingest", "limit": 3}).json()
    rest = requests.get(f"{base}/v1/jobs", params={"kind": "ingest", "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == [made[6], made[4], made[3], made[2], made[1], made[0]]

    for bad in ({"cursor": "garbage"}, {"limit": 0}, {"limit": 101}, {"state": "done"}, {"kind": "x"}):
        resp = requests.get(f"{base}/v1/jobs", params=bad)
        assert resp.status_code == 422 and resp.json()["code"] == "invalid", bad


# Cancel

def test_cancel_queued_rebuild_never_runs(settings, procs, rclient):
    base = procs.api(settings)
    create_collection(base)
    ingest = submit(base, rebuild=False).json()
    rebuild = requests.post(f"{base}/v1/collections/docs/rebuild").json()
    assert rclient.get(keys.rebuild_pending("docs")) == rebuild["id"]
    resp = requests.post(f"{base}/v1/jobs/{rebuild['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["state"] == "canceled"
    assert resp.headers["Location"] == f"/v1/jobs/{rebuild['id']}"
    assert rclient.get(keys.rebuild_pending("docs")) is None  # the pending slot is free again
    assert rclient.scard(keys.queued("index")) == 0
    procs.worker(settings)
    assert wait_job(base, ingest["id"])["state"] == "succeeded"
    # The worker got the canceled rebuild's message and skipped it.
    wait_for(lambda: any("swapline.rebuild[" in line and "succeeded in" in line
                         for line in (procs.log_dir / "worker-w1.log").read_text().splitlines()),
             message="the worker to skip the canceled rebuild")
    job = requests.get(f"{base}/v1/jobs/{rebuild['id']}").json()
    assert job["state"] == "canceled" and job["started_at"] is None
    assert rclient.hgetall(keys.pointer("docs")) == {}
    again = requests.post(f"{base}/v1/collections/docs/rebuild")
    assert again.status_code == 202 and wait_job(base, again.json()["id"])["state"] == "succeeded"
    # Canceling a finished job is a conflict; an unknown one is not found.
    done = requests.post(f"{base}/v1/jobs/{again.json()['id']}/cancel")
    assert done.status_code == 409 and done.json()["code"] == "not_cancelable"
    assert requests.post(f"{base}/v1/jobs/{'0' * 32}/cancel").status_code == 404
    assert requests.post(f"{base}/v1/jobs/not-a-job/cancel").status_code == 404


def test_cancel_running_rebuild_publishes_nothing_and_releases_the_lock(settings, procs, rclient):
    slow = settings.with_(build_step=8, build_step_delay=0.05)
    base = procs.api(slow)
    procs.worker(slow)
    create_collection(base)
    first = wait_job(base, submit(base, docs=DOCS).json()["id"])
    v1 = wait_job(base, first["result"]["rebuild_job_id"])["result"]["version"]
    corpus = [{"id": f"n{i}", "text": f"note {i} on subject {i % 11}"} for i in range(300)]
    rebuild_id = wait_job(base, submit(base, docs=corpus).json()["id"])["result"]["rebuild_job_id"]
    wait_for(lambda: requests.get(f"{base}/v1/jobs/{rebuild_id}").json()["progress"]["stage"] == "build",
             message="the rebuild to be building")
    holder = rclient.get(keys.lock("docs"))
    assert holder and holder.startswith(rebuild_id)
    fence = int(holder.split("|")[1])
    resp = requests.post(f"{base}/v1/jobs/{rebuild_id}/cancel")
    # The job is read back after it is flagged: a worker at its next step may have stopped it already.
    assert resp.status_code == 202 and resp.json()["cancel_requested"]
    assert resp.json()["state"] in ("running", "canceled")
    job = wait_job(base, rebuild_id)
    assert job["state"] == "canceled" and job["result"] is None
    assert int(rclient.hget(keys.pointer("docs"), "version")) == v1  # nothing published
    assert rclient.get(keys.lock("docs")) is None  # lease released
    index_dir = slow.data_dir / "indexes" / "docs"
    assert sorted(os.listdir(index_dir)) == ["parts", f"v{v1}"]  # no v{fence}, no temporary directory
    assert os.listdir(index_dir / "parts") == [f"p{v1}"]  # and no part of the canceled build
    assert not (index_dir / f"v{fence}").exists()
    # The collection still rebuilds afterwards.
    again = requests.post(f"{base}/v1/collections/docs/rebuild").json()
    assert wait_job(base, again["id"], timeout=120)["state"] == "succeeded"
