"""Sources on real processes: the session's redis-server, two `celery worker` processes, the API under
gunicorn and the watcher, with the hashing embedder and small fixture trees made by each test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import pytest
import requests

from tests.sourcetree import INDEXED, make_tree
from tests.support import BIN, create_collection, search, wait_for, wait_job

pytestmark = pytest.mark.integration


@pytest.fixture
def roots(tmp_path):
    folder = tmp_path / "roots"
    folder.mkdir()
    return folder


@pytest.fixture
def src_settings(settings, roots):
    return settings.with_(source_roots=str(roots), source_batch_files=1)


def add_source(base: str, path: str, name: str = "docs", **body) -> requests.Response:
    return requests.post(f"{base}/v1/collections/{name}/sources", json={"path": path, **body}, timeout=30)


def reconcile(base: str, source_id: str, name: str = "docs") -> dict:
    resp = requests.post(f"{base}/v1/collections/{name}/sources/{source_id}/reconcile", timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()


def finished(base: str, job_id: str, state: str = "succeeded") -> dict:
    job = wait_job(base, job_id, timeout=90)
    assert job["state"] == state, job
    rebuild_id = (job.get("result") or {}).get("rebuild_job_id")
    if rebuild_id:
        assert wait_job(base, rebuild_id, timeout=90)["state"] == "succeeded"
    return job


def served(base: str, job: dict) -> None:
    """Wait until the API serves the version the job's rebuild published."""
    version = wait_job(base, job["result"]["rebuild_job_id"])["result"]["version"]
    wait_for(lambda: search(base, "anything").json()["index_version"] >= version, timeout=30,
             message=f"v{version} to be served")


def top(base: str, query: str, k: int = 3) -> list[str]:
    return [hit["doc_id"] for hit in search(base, query, k=k).json()["hits"]]


def children(base: str, kind: str = "ingest_files") -> list[dict]:
    return requests.get(f"{base}/v1/jobs", params={"kind": kind, "limit": 100}, timeout=10).json()["jobs"]


def test_reconcile_then_edit_delete_add_then_unchanged(src_settings, procs, roots):
    base = procs.api(src_settings)
    for name in ("w1", "w2"):  # reads slowed a little, so each batch outlasts the other worker's wait
        procs.worker(src_settings, name=name, app="tests.faulty_worker", SWAPLINE_TEST_READ_DELAY="0.3")
    tree = make_tree(roots / "orchard")
    (tree / "link-out.md").symlink_to(roots.parent / "outside.md")
    (roots.parent / "outside.md").write_text("# Outside\nnever read\n")
    create_collection(base)

    resp = add_source(base, "orchard")
    assert resp.status_code == 202, resp.text
    source, job = resp.json()["source"], resp.json()["job"]
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}" and job["kind"] == "reconcile"
    assert source["path"] == str(tree) and re.fullmatch(r"[0-9a-f]{32}", source["id"])
    first = finished(base, job["id"])
    result = first["result"]
    assert (result["files_seen"], result["files_added"], result["files_changed"], result["files_removed"]) \
        == (len(INDEXED) + 1, len(INDEXED), 0, 0)
    # secret.md (gitignored), data/blob.txt (binary) and link-out.md (a symlink out of the source).
    assert result["files_skipped"] == 3
    assert result["skipped"] == {"gitignored": 1, "binary": 1, "symlink_outside": 1}
    assert result["chunks_embedded"] > 0 and result["chunks_reused"] == 0
    served(base, first)

    # Fan-out: one batch per file, spread over both workers, each batch one child job.
    batches = children(base)
    assert len(batches) == len(INDEXED) and all(b["state"] == "succeeded" for b in batches)
    workers = {b["result"]["worker"].split("@")[0] for b in batches}
    assert workers == {"w1", "w2"}, workers

    hit = search(base, "ladders inspected before the apricot harvest").json()["hits"][0]
    assert hit["doc_id"] == "docs/guide.md" and hit["heading_path"] == ["Guide", "Ladders"]
    assert hit["metadata"]["front_matter"] == {"title": "Picking guide", "owner": "crews"}
    assert hit["metadata"]["type"] == "markdown" and hit["metadata"]["source"] == source["id"]
    code = search(base, "crew size pickers needed for a terrace").json()["hits"][0]
    assert code["doc_id"] == "src/planner.py" and code["metadata"]["language"] == "python"
    assert code["metadata"]["type"] == "code" and code["lines"][0] == 1
    assert "secret.md" not in top(base, "gitignored plum recipe", k=10)
    assert not any("Outside" in h["text"] for h in search(base, "never read", k=10).json()["hits"])

    # Edit one, delete one, add one: only those are embedded; search shows all three after the swap.
    (tree / "README.md").write_text("# Orchard\nOrchard now also tracks quince grafting schedules.\n")
    (tree / "notes.txt").unlink()
    (tree / "docs" / "pruning.md").write_text("# Pruning\nWinter pruning of walnut trees opens the canopy.\n")
    second = finished(base, reconcile(base, source["id"])["id"])
    r = second["result"]
    assert (r["files_added"], r["files_changed"], r["files_removed"]) == (1, 1, 1)
    assert r["chunks_embedded"] == 2 and len(children(base)) == len(INDEXED) + 2
    served(base, second)
    assert top(base, "quince grafting schedules", 1) == ["README.md"]
    assert top(base, "winter pruning walnut canopy", 1) == ["docs/pruning.md"]
    assert "notes.txt" not in top(base, "cherry tarps hail season", k=10)

    # Unchanged tree: nothing embedded, no rebuild.
    third = finished(base, reconcile(base, source["id"])["id"])
    assert third["result"]["chunks_embedded"] == 0 and third["result"]["files_unchanged"] == len(INDEXED)
    assert "rebuild_job_id" not in third["result"]

    listed = requests.get(f"{base}/v1/collections/docs/sources", timeout=10).json()["sources"]
    assert [s["id"] for s in listed] == [source["id"]]
    last = listed[0]["last_reconcile"]
    assert last["job_id"] == third["id"] and last["chunks_embedded"] == 0 and last["finished_at"]
    assert listed[0]["files"] == len(INDEXED)  # one deleted, one added

    # A reconcile while one is queued or running answers 409 naming it.
    running = reconcile(base, source["id"])
    busy = requests.post(f"{base}/v1/collections/docs/sources/{source['id']}/reconcile", timeout=10)
    if busy.status_code == 409:
        assert busy.json()["job_id"] == running["id"] and busy.json()["code"] == "reconcile_in_progress"
    finished(base, running["id"])

    # Removing the source removes its documents.
    removed = requests.delete(f"{base}/v1/collections/docs/sources/{source['id']}", timeout=10)
    assert removed.status_code == 202
    gone = finished(base, removed.json()["id"])
    assert gone["result"]["files_removed"] == len(INDEXED)
    wait_for(lambda: search(base, "quince grafting").json()["hits"] == [], message="an empty index")
    assert requests.get(f"{base}/v1/collections/docs/sources/{source['id']}", timeout=10).status_code == 404


def test_path_escapes_are_refused_and_nothing_is_read(settings, procs, roots, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n")
    inside = make_tree(roots / "orchard")
    (roots / "escape").symlink_to(outside)
    real = tmp_path / "real-root"
    make_tree(real / "repo")
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(real)

    off = procs.api(settings, name="off")
    create_collection(off)
    refused = add_source(off, str(inside))
    assert refused.status_code == 403 and "SWAPLINE_SOURCE_ROOTS" in refused.json()["message"]

    base = procs.api(settings.with_(source_roots=f"{roots}:{linked_root}"), name="on")
    cases = {
        "orchard/../../outside": 403,              # `..` out of the root
        str(outside): 403,                         # an absolute path outside every root
        "escape": 403,                             # a symlink inside a root that leads out of it
        str(roots / "orchard" / ".." / ".." / "outside"): 403,
        "missing-folder": 422,
        "orchard/README.md": 422,                  # a file, not a folder
    }
    for path, status in cases.items():
        resp = add_source(base, path)
        assert resp.status_code == status, (path, resp.text)
        assert resp.json()["code"] in ("path_outside_roots", "path_not_found", "path_not_a_folder")
    assert requests.get(f"{base}/v1/jobs", timeout=10).json()["jobs"] == []  # nothing was submitted

    # A root that is itself a symlink: paths through the link and through its target are both inside.
    through_link = add_source(base, str(linked_root / "repo"))
    assert through_link.status_code == 202, through_link.text
    assert through_link.json()["source"]["path"] == str((real / "repo").resolve())
    again = add_source(base, str(real / "repo"))
    assert again.status_code == 409 and again.json()["code"] == "source_conflict"


def test_watched_source_picks_up_an_edit_and_catches_up_after_a_restart(src_settings, procs, roots):
    fast = src_settings.with_(watch_lease_seconds=3, watch_debounce_seconds=0.2)
    base = procs.api(fast)
    procs.worker(fast)
    first_watcher = procs.watcher(fast, name="watcher1")
    second_watcher = procs.watcher(fast, name="watcher2")
    tree = make_tree(roots / "orchard")
    create_collection(base)
    resp = add_source(base, "orchard", watch=True)
    assert resp.status_code == 202, resp.text
    source = resp.json()["source"]
    served(base, finished(base, resp.json()["job"]["id"]))

    def holder():
        return requests.get(f"{base}/v1/collections/docs/sources/{source['id']}", timeout=10).json()["watched_by"]

    def started():
        return [w for w in (first_watcher, second_watcher) if f"event=watch.start source={source['id']}" in w.log()]

    wait_for(holder, timeout=30, message="a watcher to take the source")
    # The lease is taken just before the holder logs its start: wait for the line, not only the lease.
    wait_for(started, timeout=30, message="the watcher holding the source to log its start")
    starts = started()
    assert len(starts) == 1, "exactly one watcher follows the source"

    # An edit with no request: searchable after the watcher's reconcile and the rebuild.
    (tree / "docs" / "irrigation.md").write_text("# Irrigation\nMoisture sensors now steer the mango drip lines.\n")
    wait_for(lambda: top(base, "moisture sensors mango drip", 1) == ["docs/irrigation.md"], timeout=60,
             message="the edit to be searchable")

    # The holder dies: the other takes the lease over and catches up on what changed meanwhile.
    holder_proc = starts[0]
    holder_proc.stop()
    (tree / "docs" / "orchard-map.md").write_text("# Map\nThe lychee terraces sit above the old mill.\n")
    other = second_watcher if holder_proc is first_watcher else first_watcher
    wait_for(lambda: f"event=watch.start source={source['id']}" in other.log(), timeout=30,
             message="the other watcher to take over")
    wait_for(lambda: top(base, "lychee terraces old mill", 1) == ["docs/orchard-map.md"], timeout=60,
             message="the change made while unwatched to be searchable")


def start_with_faults(settings, procs, roots, fault_dir, fail_reads: str) -> tuple[str, dict]:
    """An API and a worker whose reads of the listed files fail (tests/faulty_worker.py); the fixture
    tree as a source. Returns (API base URL, the first reconcile job)."""
    fault_dir.mkdir()
    base = procs.api(settings)
    procs.worker(settings, app="tests.faulty_worker", SWAPLINE_TEST_FAIL_READS=fail_reads,
                 SWAPLINE_TEST_FAULT_DIR=str(fault_dir))
    make_tree(roots / "orchard")
    create_collection(base)
    return base, add_source(base, "orchard").json()["job"]


def test_a_failing_batch_is_retried_alone_at_the_default_wait(src_settings, procs, roots, tmp_path):
    fault_dir = tmp_path / "faults"
    base, job = start_with_faults(src_settings, procs, roots, fault_dir, "docs/irrigation.md:1")
    done = finished(base, job["id"])
    assert done["result"]["files_failed"] == []
    attempts = {b["result"]["files"] and b["id"]: b["result"]["attempts"] for b in children(base)}
    assert sorted(attempts.values()) == [1] * (len(INDEXED) - 1) + [2], attempts
    assert (fault_dir / "docs__irrigation.md").read_text() == "xx"  # read twice: failed once, then worked
    served(base, done)
    assert top(base, "drip lines water the pear rows", 1) == ["docs/irrigation.md"]


def test_a_batch_that_keeps_failing_fails_the_parent_naming_its_files(src_settings, procs, roots, tmp_path):
    quick = src_settings.with_(source_retry_seconds=0.1, source_batch_retries=2)
    fault_dir = tmp_path / "faults"
    base, job = start_with_faults(quick, procs, roots, fault_dir, "src/planner.py:-1")
    done = finished(base, job["id"], state="failed")
    assert "src/planner.py" in done["error"] and done["result"]["files_failed"] == ["src/planner.py"]
    batches = children(base)
    failed = [b for b in batches if b["state"] == "failed"]
    assert len(failed) == 1 and "after 3 attempts" in failed[0]["error"]
    assert all(b["result"]["attempts"] == 1 for b in batches if b["state"] == "succeeded")  # not redone
    assert (fault_dir / "src__planner.py").read_text() == "xxx"
    served(base, done)  # what succeeded is searchable
    assert top(base, "drip lines water the pear rows", 1) == ["docs/irrigation.md"]


def test_canceling_a_reconcile_cancels_its_children(src_settings, procs, roots):
    base = procs.api(src_settings)
    tree = roots / "big"
    for i in range(30):
        (tree / f"d{i:02d}").mkdir(parents=True)
        (tree / f"d{i:02d}" / "page.md").write_text(f"# Page {i}\nfig tree number {i}\n")
    create_collection(base)
    job = add_source(base, "big").json()["job"]
    procs.worker(src_settings, queues="ingest")  # the parent runs; its 30 children queue behind
    wait_for(lambda: requests.get(f"{base}/v1/jobs/{job['id']}", timeout=5).json()["progress"]["stage"] == "ingest"
             or len(children(base)) == 30, timeout=60, message="the fan-out")
    resp = requests.post(f"{base}/v1/jobs/{job['id']}/cancel", timeout=10)
    assert resp.status_code == 202, resp.text
    done = wait_job(base, job["id"], timeout=60)
    assert done["state"] == "canceled", done
    states = [b["state"] for b in children(base)]
    assert states.count("canceled") >= 20 and "queued" not in states and "running" not in states
    assert requests.get(f"{base}/v1/jobs", params={"kind": "rebuild"}, timeout=10).json()["jobs"] == []


def test_searches_keep_answering_during_a_large_reconcile(src_settings, procs, roots):
    settings = src_settings.with_(source_batch_files=16)
    base = procs.api(settings, threads=8)
    procs.worker(settings, name="w1")
    procs.worker(settings, name="w2")
    create_collection(base)
    make_tree(roots / "orchard")
    added = add_source(base, "orchard").json()
    source_id, first = added["source"]["id"], added["job"]
    served(base, finished(base, first["id"]))
    big = roots / "orchard" / "bulk"
    for i in range(600):
        (big / f"g{i % 20:02d}").mkdir(parents=True, exist_ok=True)
        (big / f"g{i % 20:02d}" / f"n{i}.md").write_text(f"# Note {i}\n## Section {i % 7}\nplum {i} pear {i % 13}\n")

    latencies, failures = [], []
    stop = threading.Event()

    def hammer():
        session = requests.Session()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                resp = session.post(f"{base}/v1/collections/docs/search", json={"query": "pear rows", "k": 5},
                                    timeout=10)
                if resp.status_code != 200 or not resp.json()["hits"]:
                    failures.append((resp.status_code, resp.text[:200]))
            except requests.RequestException as exc:
                failures.append(repr(exc))
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        done = finished(base, reconcile(base, source_id)["id"])
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert done["result"]["files_added"] == 600
    assert not failures, failures[:5]
    ordered = sorted(latencies)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    print(f"searches during the reconcile: {len(ordered)}, p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")
    assert len(ordered) > 20


def test_cli_source_add_list_reconcile(src_settings, procs, roots):
    base = procs.api(src_settings)
    procs.worker(src_settings)
    make_tree(roots / "orchard")
    create_collection(base)

    def cli(*args):
        return subprocess.run([str(BIN / "swapline"), "--url", base, *args], capture_output=True, text=True,
                              timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")})

    added = cli("source", "add", "docs", "orchard", "--wait")
    assert added.returncode == 0, added.stderr
    source_id = re.search(r"source ([0-9a-f]{32}) follows", added.stdout).group(1)
    assert re.search(r"reconcile [0-9a-f]{32} succeeded in [\d.]+ s: files seen 6, files added 5", added.stdout)
    listed = cli("source", "list", "docs")
    assert source_id in listed.stdout and "5 files" in listed.stdout and "last reconcile succeeded" in listed.stdout
    again = cli("source", "reconcile", "docs", source_id, "--wait")
    assert again.returncode == 0, again.stderr
    assert "chunks embedded 0" in again.stdout and "nothing to rebuild" in again.stdout
    assert "reconcile [" in again.stderr  # the progress bar
    # A collection that does not exist yet is created, as `swapline ingest` does (--no-create refuses).
    refused = cli("source", "add", "fresh", "orchard", "--no-create")
    assert refused.returncode == 1 and "does not exist" in refused.stderr
    created = cli("source", "add", "fresh", "orchard", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    assert "created collection 'fresh'" in created.stderr
    assert json.loads(created.stdout)["job"]["result"]["files_added"] == 5
