"""Deleting a document and dropping a collection, end to end on real processes."""

from __future__ import annotations

import os

import pytest
import requests

from shared import keys
from tests.support import create_collection, ingest_and_rebuild, search, wait_for, wait_job

pytestmark = pytest.mark.integration

DOCS = [
    {"id": "kep-1", "text": "# Scheduling\nPods with higher priority preempt lower priority pods."},
    {"id": "kep-2", "text": "# Storage\nPersistent volumes are resized online without restarting the pod."},
    {"id": "kep-3", "text": "# Networking\nServices get both IPv4 and IPv6 cluster addresses."},
]






def serves(base, version, name="docs"):
    return search(base, "anything", name, k=10).json().get("index_version") == version


def test_delete_document_end_to_end(settings, procs):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base, "docs")
    v1 = ingest_and_rebuild(base, DOCS)[1]["result"]["version"]
    wait_for(lambda: serves(base, v1), message="v1 served")
    assert "kep-2" in {h["doc_id"] for h in search(base, "persistent volumes resized online", k=10).json()["hits"]}

    resp = requests.delete(f"{base}/v1/collections/docs/documents/kep-2")
    assert resp.status_code == 202 and resp.json()["kind"] == "delete"
    assert resp.headers["Location"] == f"/v1/jobs/{resp.json()['id']}"
    job = wait_job(base, resp.json()["id"])
    assert job["state"] == "succeeded" and job["result"]["deleted"] == 1
    rebuild = wait_job(base, job["result"]["rebuild_job_id"])
    assert rebuild["state"] == "succeeded" and rebuild["result"]["vectors"] == 2
    wait_for(lambda: serves(base, rebuild["result"]["version"]), message="the rebuilt version served")
    hits = search(base, "persistent volumes resized online", k=10).json()["hits"]
    assert hits and "kep-2" not in {h["doc_id"] for h in hits}
    status = requests.get(f"{base}/v1/collections/docs").json()
    assert status["documents"] == 2 and status["index"]["vectors"] == 2

    # Deleting an id that is not there is a job that deletes nothing; ids may hold slashes.
    ghost = wait_job(base, requests.delete(f"{base}/v1/collections/docs/documents/no/such%2Fdoc").json()["id"])
    assert ghost["state"] == "succeeded" and ghost["result"]["deleted"] == 0
    assert requests.delete(f"{base}/v1/collections/nope/documents/x").status_code == 404
    # A deleted document can come back.
    v3 = ingest_and_rebuild(base, [DOCS[1]])[1]["result"]["version"]
    wait_for(lambda: serves(base, v3), message="v3 served")
    assert search(base, "persistent volumes resized online", k=10).json()["hits"][0]["doc_id"] == "kep-2"


def test_drop_collection_end_to_end(settings, procs, rclient):
    base = procs.api(settings)
    base2 = procs.api(settings, name="api2")
    procs.worker(settings)
    for name in ("docs", "keep"):
        create_collection(base, name)
    v1 = ingest_and_rebuild(base, DOCS)[1]["result"]["version"]
    ingest_and_rebuild(base, DOCS[:1], name="keep")
    for b in (base, base2):
        wait_for(lambda b=b: serves(b, v1), message=f"{b} serves v1")
    resp = requests.delete(f"{base}/v1/collections/docs")
    assert resp.status_code == 202 and resp.json()["kind"] == "drop"
    assert resp.headers["Location"] == f"/v1/jobs/{resp.json()['id']}"
    job = wait_job(base, resp.json()["id"])
    assert job["state"] == "succeeded", job

    for b in (base, base2):
        assert requests.get(f"{b}/v1/collections/docs").status_code == 404
        assert search(b, "persistent volumes", k=10).status_code == 404
    wait_for(lambda: "docs" not in requests.get(f"{base2}/readyz").json()["checks"]["served_versions"],
             message="api2 to drop the collection on its next sync")
    assert not (settings.data_dir / "segments" / "docs").exists()
    assert not (settings.data_dir / "indexes" / "docs").exists()
    assert [p for p in os.listdir(settings.data_dir / "indexes") if p != "keep"] == []
    for key in keys.collection_keys("docs") + [keys.lock("docs"), keys.dropping("docs")]:
        assert not rclient.exists(key), key
    assert not rclient.sismember(keys.collections(), "docs")
    # The other collection is untouched; the dropped one's jobs stay listed (history).
    assert search(base, "priority preempt", name="keep", k=10).json()["hits"][0]["doc_id"] == "kep-1"
    listed = requests.get(f"{base}/v1/jobs", params={"collection": "docs"}).json()["jobs"]
    assert listed[0]["id"] == job["id"] and listed[0]["kind"] == "drop"

    # The name can be used again and starts empty, with fences above the dropped collection's.
    create_collection(base, "docs")
    assert requests.get(f"{base}/v1/collections/docs").json()["documents"] == 0
    v2 = ingest_and_rebuild(base, DOCS[2:])[1]["result"]["version"]
    assert v2 > v1
    wait_for(lambda: serves(base, v2), message="the new collection served")
    assert {h["doc_id"] for h in search(base, "anything", k=10).json()["hits"]} == {"kep-3"}


def test_drop_cancels_queued_jobs_and_stops_a_running_rebuild_first(settings, procs, rclient):
    slow = settings.with_(build_step=8, build_step_delay=0.05)
    base = procs.api(slow)
    create_collection(base, "docs")
    corpus = [{"id": f"n{i}", "text": f"note {i} on subject {i % 11}"} for i in range(300)]
    ingest_worker = procs.worker(slow, name="ingest", queues="ingest")
    ingest = wait_job(base, requests.post(f"{base}/v1/collections/docs/documents",
                                          json={"documents": corpus}).json()["id"])
    rebuild_id = ingest["result"]["rebuild_job_id"]
    ingest_worker.stop()
    queued = requests.post(f"{base}/v1/collections/docs/documents", json={"documents": corpus[:2]}).json()
    # Two index slots: the drop runs while the rebuild is still building.
    procs.worker(slow, name="index", queues="index", concurrency=2)
    wait_for(lambda: requests.get(f"{base}/v1/jobs/{rebuild_id}").json()["progress"]["stage"] == "build",
             message="the rebuild to be building")
    drop = requests.delete(f"{base}/v1/collections/docs")
    assert drop.status_code == 202
    # Until the drop has finished, the name cannot be created again.
    recreate = requests.post(f"{base}/v1/collections", json={"name": "docs"})
    assert recreate.status_code == 409 and recreate.json()["code"] == "collection_dropping"
    assert recreate.json()["job_id"] == drop.json()["id"]
    done = wait_job(base, drop.json()["id"], timeout=90)
    assert done["state"] == "succeeded", done
    rebuild = wait_job(base, rebuild_id)
    assert rebuild["state"] == "canceled" and rebuild["started_at"] and rebuild["error"] == "canceled by request"
    canceled = wait_job(base, queued["id"])
    assert canceled["state"] == "canceled" and canceled["error"] == "collection dropped"
    assert not (slow.data_dir / "staging" / f"{queued['id']}.jsonl").exists()
    for key in (keys.pointer("docs"), keys.lock("docs"), keys.dropping("docs"), keys.collection_docs("docs")):
        assert not rclient.exists(key), key
    assert not (slow.data_dir / "indexes" / "docs").exists()
    create_collection(base, "docs")
