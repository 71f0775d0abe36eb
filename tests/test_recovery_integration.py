"""Disaster recovery and snapshots on real processes (the session's redis-server, a celery worker,
API processes under gunicorn, the hashing embedder): Redis emptied then rebuilt from the data dir;
a snapshot taken, listed, downloaded and restored as a new collection."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import requests

from shared import keys
from tests.support import create_collection, ingest_and_rebuild, search, wait_for, wait_job

pytestmark = pytest.mark.integration

QUERIES = ("pods preempt lower priority", "volumes resized online", "ipv6 addresses")


def docs(name: str, n: int = 6) -> list[dict]:
    topics = ["Pods with higher priority preempt lower priority pods.", "Persistent volumes are resized online.",
              "Services get both IPv4 and IPv6 addresses.", "Nodes repel pods with taints.",
              "An ingress routes HTTP traffic by host.", "Jobs run pods to completion."]
    return [{"id": f"{name}-{i}", "text": f"# {name} {i}\n{topics[i % len(topics)]} ({name})",
             "metadata": {"n": i}} for i in range(n)]


def hits(base: str, name: str) -> list:
    out = []
    for query in QUERIES:
        body = search(base, query, name, k=4).json()
        out.append([(h["doc_id"], h["chunk_id"], round(h["score"], 6)) for h in body["hits"]])
    return out


def served(base: str, name: str, version: int) -> bool:
    return search(base, "anything", name).json()["index_version"] == version


def test_redis_lost_then_recovered_from_disk(settings, procs, rclient):
    base = procs.api(settings)
    procs.worker(settings)
    before, versions = {}, {}
    for name in ("alpha", "beta", "gamma"):
        create_collection(base, name)
        ingest_and_rebuild(base, docs(name)[:3], name)
        _, rebuild = ingest_and_rebuild(base, docs(name)[3:], name)
        versions[name] = rebuild["result"]["version"]
        wait_for(lambda n=name: served(base, n, versions[n]), message=f"{name} served")
        before[name] = hits(base, name)
    embedded = {n: int(v) for n, v in rclient.hgetall(keys.embedded_chunks()).items()}
    fences = {name: int(rclient.get(keys.fence(name))) for name in before}

    rclient.flushall()
    assert requests.get(f"{base}/v1/collections/alpha", timeout=10).status_code == 404
    resp = requests.post(f"{base}/v1/admin/recover", timeout=10)
    assert resp.status_code == 202 and resp.headers["Location"] == f"/v1/jobs/{resp.json()['id']}"
    job = wait_job(base, resp.json()["id"])
    assert job["state"] == "succeeded" and job["kind"] == "recover", job
    result = job["result"]
    assert result["recovered"] == 3 and result["skipped"] == 0 and result["embedded"] == 0
    assert result["documents"] == 18 and result["segments"] == 6 and result["versions"] == 6
    assert not rclient.hgetall(keys.embedded_chunks())  # nothing was embedded again
    for name in before:
        status = requests.get(f"{base}/v1/collections/{name}", timeout=10).json()
        assert status["documents"] == 6 and status["index"]["version"] == versions[name] and status["drift"] == 0

    # A fresh API process loads the recovered pointers and answers the same hits, scores included.
    fresh = procs.api(settings, name="api2")
    for name in before:
        wait_for(lambda n=name: served(fresh, n, versions[n]), message=f"{name} served by the new process")
        assert hits(fresh, name) == before[name]

    # A second recover leaves known collections alone.
    again = wait_job(base, requests.post(f"{base}/v1/admin/recover", timeout=10).json()["id"])
    assert again["result"]["recovered"] == 0 and again["result"]["skipped"] == 3

    # Ingest and rebuild go on: incremental from the recovered version, fences above the old ones.
    job, rebuild = ingest_and_rebuild(base, [{"id": "alpha-new", "text": "# New\nA document after the recover."}],
                                      "alpha")
    assert job["result"]["embedded"] == 1 and job["result"]["segment"] == 3
    assert rebuild["result"]["incremental"] is True
    assert rebuild["result"]["version"] > fences["alpha"] >= versions["alpha"]
    assert embedded  # the first ingests did count what they embedded


def test_snapshot_download_restore_and_refusals(settings, procs, tmp_path):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base, "orig")
    ingest_and_rebuild(base, docs("orig")[:3], "orig")
    _, rebuild = ingest_and_rebuild(base, docs("orig")[3:], "orig")
    version = rebuild["result"]["version"]
    wait_for(lambda: served(base, "orig", version), message="orig served")

    resp = requests.post(f"{base}/v1/collections/orig/snapshots", timeout=10)
    assert resp.status_code == 202, resp.text
    job = wait_job(base, resp.json()["id"])
    assert job["state"] == "succeeded" and job["kind"] == "snapshot", job
    snap_id = job["result"]["id"]
    listed = requests.get(f"{base}/v1/collections/orig/snapshots", timeout=10).json()["snapshots"]
    assert [(s["id"], s["version"]) for s in listed] == [(snap_id, version)]

    download = requests.get(f"{base}/v1/collections/orig/snapshots/{snap_id}/download", timeout=30)
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/x-tar"
    on_disk = settings.data_dir / "snapshots" / "orig" / f"{snap_id}.tar"
    assert download.content == on_disk.read_bytes()
    assert hashlib.sha256(download.content).hexdigest() == download.headers["X-Swapline-SHA256"] == listed[0]["sha256"]
    assert len(download.content) == listed[0]["bytes"]
    assert requests.get(f"{base}/v1/collections/orig/snapshots/..%2F..%2Fx/download", timeout=10).status_code == 404

    # From the kept snapshot: identical hits.
    resp = requests.post(f"{base}/v1/collections", json={"name": "copy", "from_snapshot": {"collection": "orig",
                                                                                          "id": snap_id}}, timeout=10)
    assert resp.status_code == 202 and resp.json()["kind"] == "restore", resp.text
    restored = wait_job(base, resp.json()["id"])
    assert restored["state"] == "succeeded" and restored["result"]["embedded"] == 0, restored
    wait_for(lambda: served(base, "copy", version), message="copy served")
    assert hits(base, "copy") == hits(base, "orig")

    # From the downloaded archive, uploaded.
    resp = requests.post(f"{base}/v1/collections/upload/restore", data=download.content,
                         headers={"Content-Type": "application/x-tar"}, timeout=30)
    assert resp.status_code == 202, resp.text
    assert wait_job(base, resp.json()["id"])["state"] == "succeeded"
    wait_for(lambda: served(base, "upload", version), message="upload served")
    assert hits(base, "upload") == hits(base, "orig")
    # The restored collection goes on: an ingest and an incremental rebuild.
    _, more = ingest_and_rebuild(base, [{"id": "extra", "text": "# Extra\nOne more."}], "upload")
    assert more["result"]["incremental"] is True and more["result"]["version"] > version

    # A truncated archive: the job fails, no collection, nothing on disk.
    cut = download.content[:len(download.content) // 2]
    resp = requests.post(f"{base}/v1/collections/broken/restore", data=cut,
                         headers={"Content-Type": "application/x-tar"}, timeout=30)
    assert resp.status_code == 202
    failed = wait_job(base, resp.json()["id"])
    assert failed["state"] == "failed" and "refused" in failed["error"], failed
    assert requests.get(f"{base}/v1/collections/broken", timeout=10).status_code == 404
    data = settings.data_dir
    assert not (data / "segments" / "broken").exists() and not (data / "indexes" / "broken").exists()
    assert not list((data / "staging").glob("*.tar")) and not list((data / "restoring").iterdir())

    # A symlink member: refused the same way.
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        link = tarfile.TarInfo("segments/0000000001/meta.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    resp = requests.post(f"{base}/v1/collections/evil/restore", data=evil.getvalue(),
                         headers={"Content-Type": "application/x-tar"}, timeout=30)
    failed = wait_job(base, resp.json()["id"])
    assert failed["state"] == "failed" and "not a regular file" in failed["error"]

    # Bad requests get their 4xx before any job.
    unknown = requests.post(f"{base}/v1/collections", json={"name": "x", "from_snapshot": {
        "collection": "orig", "id": "20200101T000000Z-00000000"}}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["code"] == "snapshot_not_found"
    taken = requests.post(f"{base}/v1/collections", json={"name": "copy", "from_snapshot": {
        "collection": "orig", "id": snap_id}}, timeout=10)
    assert taken.status_code == 409
    bad = requests.post(f"{base}/v1/collections", json={"name": "Bad Name", "from_snapshot": {
        "collection": "orig", "id": snap_id}}, timeout=10)
    assert bad.status_code == 422
    assert requests.post(f"{base}/v1/collections/x2/restore", data=b"abc", timeout=10).status_code == 415
