"""The core path on real parts: the session's redis-server, `celery worker` subprocesses and API
processes under gunicorn, with the hashing embedder."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.support import create_collection, ingest, ingest_and_rebuild, search, wait_for, wait_job

pytestmark = pytest.mark.integration

DOCS = [
    {"id": "kep-1", "text": "# Scheduling\n## Pod priority\nPods with higher priority preempt lower priority pods "
                            "when the cluster is full.", "metadata": {"source": "keps"}},
    {"id": "kep-2", "text": "# Storage\nPersistent volumes are resized online without restarting the pod."},
    {"id": "kep-3", "text": "# Networking\n### Dual stack\nServices get both IPv4 and IPv6 cluster addresses."},
]










def test_create_ingest_rebuild_search(settings, procs):
    import psutil

    api, base = procs.api_proc(settings)
    worker = procs.worker(settings)
    # Workers run below the API's CPU priority (SWAPLINE_WORKER_NICE, default 10), pool processes too.
    assert settings.worker_nice == 10 and psutil.Process(api.popen.pid).nice() == 0
    celery = psutil.Process(worker.popen.pid)
    assert {p.nice() for p in [celery, *celery.children(recursive=True)]} == {10}
    assert create_collection(base) == {"name": "docs", "documents": 0, "chunks": 0, "index": None,
                                       "default_mode": "hybrid"}
    empty = search(base, "anything")
    assert empty.json() == {"index_version": None, "mode": "hybrid", "scanned": 0, "matched_documents": None,
                            "hits": []}

    job, rebuild = ingest_and_rebuild(base, DOCS)
    assert job["kind"] == "ingest" and job["result"]["documents"] == 3 and job["result"]["chunks"] == 3
    assert rebuild["kind"] == "rebuild" and rebuild["result"]["vectors"] == 3
    assert set(rebuild["result"]["timings"]) == {"merge", "build", "write", "verify"}
    version = rebuild["result"]["version"]

    # The watcher swaps the new version in; the search names the version that answered.
    resp = wait_for(lambda: (r := search(base, "online resize of persistent volumes")).json()["index_version"]
                    == version and r,
                    message="the API to serve the new version")
    top = resp.json()["hits"][0]
    assert resp.headers["X-Index-Version"] == str(version)
    assert top["doc_id"] == "kep-2" and top["heading_path"] == ["Storage"]
    hit = search(base, "pod priority preempt").json()["hits"][0]
    assert hit["doc_id"] == "kep-1" and hit["heading_path"] == ["Scheduling", "Pod priority"]
    assert hit["metadata"] == {"source": "keps"}

    status = requests.get(f"{base}/v1/collections/docs").json()
    assert status["documents"] == 3 and status["chunks"] == 3
    assert status["index"]["version"] == version and status["index"]["vectors"] == 3

    # Re-submitting a document id replaces it; deleted text no longer matches.
    ingest_and_rebuild(base, [{"id": "kep-2", "text": "# Storage\nSnapshots of volumes are taken by the CSI driver."}])
    wait_for(lambda: search(base, "snapshots csi driver").json()["hits"][0]["doc_id"] == "kep-2",
             message="the replaced document to be served")
    hits = search(base, "online resize persistent volumes restarting", k=10).json()["hits"]
    assert all("resized online" not in h["text"] for h in hits)
    assert requests.get(f"{base}/v1/collections/docs").json()["documents"] == 3


def test_job_answers_202_while_queued_then_200(settings, procs):
    base = procs.api(settings)
    create_collection(base)
    job = ingest(base, DOCS, rebuild=False)
    # No worker yet: the job stays queued and GET answers 202.
    resp = requests.get(f"{base}/v1/jobs/{job['id']}")
    assert resp.status_code == 202 and resp.json()["state"] == "queued"
    procs.worker(settings)
    done = wait_job(base, job["id"])
    assert done["state"] == "succeeded" and done["finished_at"] and done["started_at"]
    assert "rebuild_job_id" not in done["result"]
    assert requests.get(f"{base}/v1/jobs/{job['id']}").status_code == 200


def test_second_rebuild_request_gets_409_while_queued_and_while_running(settings, procs):
    slow = settings.with_(build_step=8, build_step_delay=0.05)
    base = procs.api(slow)
    create_collection(base)
    ingest_job = ingest(base, [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(200)],
                        rebuild=False)
    first = requests.post(f"{base}/v1/collections/docs/rebuild")
    assert first.status_code == 202
    queued_conflict = requests.post(f"{base}/v1/collections/docs/rebuild")
    assert queued_conflict.status_code == 409
    assert queued_conflict.json()["job_id"] == first.json()["id"]
    assert queued_conflict.headers["Location"] == f"/v1/jobs/{first.json()['id']}"

    # The ingest finishes before any index worker exists, so the rebuild has 200 vectors to build.
    procs.worker(slow, name="ingest", queues="ingest")
    assert wait_job(base, ingest_job["id"])["state"] == "succeeded"
    procs.worker(slow, name="index", queues="index")
    wait_for(lambda: requests.get(f"{base}/v1/jobs/{first.json()['id']}").json()["state"] == "running",
             message="the rebuild to start")
    running_conflict = requests.post(f"{base}/v1/collections/docs/rebuild")
    assert running_conflict.status_code == 409 and running_conflict.json()["job_id"] == first.json()["id"]
    assert wait_job(base, first.json()["id"])["state"] == "succeeded"
    # Once it finished, a new rebuild is accepted again.
    again = requests.post(f"{base}/v1/collections/docs/rebuild")
    assert again.status_code == 202 and again.json()["id"] != first.json()["id"]
    assert wait_job(base, again.json()["id"])["state"] == "succeeded"


def test_two_api_processes_both_serve_the_new_version(settings, procs):
    base1 = procs.api(settings, name="api1")
    base2 = procs.api(settings, name="api2")
    procs.worker(settings)
    create_collection(base1)
    _, rebuild = ingest_and_rebuild(base1, DOCS)
    v1 = rebuild["result"]["version"]
    for base in (base1, base2):
        wait_for(lambda b=base: search(b, "dual stack ipv6").json()["index_version"] == v1,
                 message=f"{base} to serve v{v1}")
        assert search(base, "dual stack ipv6").json()["hits"][0]["doc_id"] == "kep-3"
    _, rebuild = ingest_and_rebuild(base2, [{"id": "kep-4", "text": "Sidecar containers start before app containers."}])
    v2 = rebuild["result"]["version"]
    assert v2 > v1
    for base in (base1, base2):
        wait_for(lambda b=base: search(b, "sidecar containers").json()["index_version"] == v2,
                 message=f"{base} to serve v{v2}")
        assert search(base, "sidecar containers start").json()["hits"][0]["doc_id"] == "kep-4"


def test_searches_during_rebuild_and_swap_all_succeed(settings, procs):
    slow = settings.with_(build_step=16, build_step_delay=0.02)
    base = procs.api(slow, threads=8)
    procs.worker(slow)
    create_collection(base)
    corpus = [{"id": f"d{i}", "text": f"# Topic {i % 13}\nParagraph {i} mentions word{i} and theme{i % 5}."}
              for i in range(300)]
    _, first = ingest_and_rebuild(base, corpus[:150])
    wait_for(lambda: search(base, "theme1").json()["index_version"] == first["result"]["version"])

    failures, versions, count = [], set(), [0]
    stop = threading.Event()

    def hammer():
        session = requests.Session()
        while not stop.is_set():
            try:
                resp = session.post(f"{base}/v1/collections/docs/search", json={"query": "theme3 word42", "k": 5},
                                    timeout=10)
                if resp.status_code != 200 or not resp.json()["hits"]:
                    failures.append((resp.status_code, resp.text[:200]))
                else:
                    versions.add(resp.json()["index_version"])
                count[0] += 1
            except requests.RequestException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        _, second = ingest_and_rebuild(base, corpus[150:])
        wait_for(lambda: second["result"]["version"] in versions, timeout=30,
                 message="the hammering searches to see the new version")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert versions == {first["result"]["version"], second["result"]["version"]}
    assert count[0] > 20
