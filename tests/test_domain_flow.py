"""Ingest and rebuild domain code called directly (no Celery), on the session's redis-server and a
temporary data dir, with the hashing embedder. Enqueueing is a list the test reads."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from shared import keys
from shared.errors import JobCanceled, JobInputError, LockBusy
from shared.index.parts import PART_FILE, PARTS_DIR, open_version, verify_version
from shared.index.vectorindex import INDEX_FILE, MANIFEST_FILE, sha256_file
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import submit_documents
from shared.jobstates import CANCELED, QUEUED, RUNNING, SUCCEEDED
from shared.services import Services
from shared.settings import Settings
from shared.storage import TMP_PREFIX
from tests.support import make_services

pytestmark = pytest.mark.integration  # every test runs on the session's redis-server

DOCS = [
    {"id": "kep-1", "text": "# Scheduling\n## Pod priority\nPods with higher priority preempt lower priority pods "
                            "when the cluster is full.", "metadata": {"source": "keps"}},
    {"id": "kep-2", "text": "# Storage\nPersistent volumes are resized online without restarting the pod."},
    {"id": "kep-3", "text": "# Networking\n### Dual stack\nServices get both IPv4 and IPv6 cluster addresses."},
]


@dataclass
class Env:
    svc: Services
    enqueued: list[tuple[str, str]]

    def enqueued_ids(self, kind: str) -> list[str]:
        return [job_id for k, job_id in self.enqueued if k == kind]


@pytest.fixture
def env(redis_url, rclient, tmp_path) -> Env:
    enqueued: list[tuple[str, str]] = []
    settings = Settings(embedder="hash", data_dir=tmp_path, redis_url=redis_url)
    svc = make_services(settings, rclient, enqueued)
    assert svc.collections.create("docs")
    return Env(svc, enqueued)


def ingest(env: Env, docs: list[dict], rebuild: bool = True) -> dict:
    job = submit_documents(env.svc, "docs", docs, rebuild=rebuild)
    assert env.enqueued[-1] == ("ingest", job["id"])
    run_ingest(env.svc, job["id"])
    done = env.svc.jobs.get(job["id"])
    assert done["state"] == SUCCEEDED, done
    return done


def rebuild(env: Env, job_id: str) -> dict:
    run_rebuild(env.svc, job_id)
    done = env.svc.jobs.get(job_id)
    assert done["state"] == SUCCEEDED, done
    return done


def ingest_and_rebuild(env: Env, docs: list[dict]) -> tuple[dict, dict]:
    job = ingest(env, docs)
    return job, rebuild(env, job["result"]["rebuild_job_id"])


def live_records(loaded) -> list[dict]:
    """The records of a version's live documents (a format-2 version keeps a replaced document's rows in
    its old part, marked deleted)."""
    entries, more = loaded.documents.page(limit=10_000)
    assert not more
    return loaded.records([rows for entry in entries for rows in entry["rows"]])


def served_records(env: Env) -> list[dict]:
    pointer = env.svc.pointers.get("docs")
    path = env.svc.storage.resolve_relative(pointer["path"])
    return live_records(open_version(path, pointer["version"]))


def top_record(loaded, query) -> dict:
    row, _score = loaded.nearest(query, 1)[0]
    return loaded.record(row)


def temp_leftovers(env: Env) -> list:
    return [p for p in env.svc.storage.root.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_ingest_then_rebuild_publishes_a_verified_version(env):
    svc = env.svc
    job = submit_documents(svc, "docs", DOCS, rebuild=True)
    assert job["state"] == QUEUED and env.enqueued == [("ingest", job["id"])]
    assert svc.storage.staging_path(job["id"]).exists()

    run_ingest(svc, job["id"])
    done = svc.jobs.get(job["id"])
    assert done["state"] == SUCCEEDED
    result = done["result"]
    assert (result["documents"], result["chunks"], result["embedded"], result["reused"]) == (3, 3, 3, 0)
    assert not svc.storage.staging_path(job["id"]).exists()
    assert svc.collections.segments("docs") == [result["segment"]]
    assert svc.collections.info("docs")["documents"] == 3 and svc.collections.info("docs")["chunks"] == 3
    rebuild_id = result["rebuild_job_id"]
    assert env.enqueued_ids("rebuild") == [rebuild_id]
    assert svc.jobs.state(rebuild_id) == QUEUED and svc.locks.pending("docs") == rebuild_id
    assert svc.pointers.get("docs") is None  # nothing is live before the rebuild

    built = rebuild(env, rebuild_id)
    version = built["result"]["version"]
    assert built["result"]["vectors"] == 3 and built["result"]["documents"] == 3
    version_dir = svc.storage.version_dir("docs", version)
    assert version_dir.is_dir()
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    assert manifest["vectors"] == 3 and manifest["dim"] == svc.embedder.dim
    assert manifest["model"] == svc.embedder.model_id and manifest["segments"] == [result["segment"]]
    assert verify_version(version_dir)["checksum"] == manifest["checksum"]
    # Format 2: the version directory holds the manifest; the rows live in the one part it references,
    # written by this rebuild, whose part.json the manifest pins and which pins each of its files.
    assert manifest["format"] == 2 and [p.name for p in version_dir.iterdir()] == [MANIFEST_FILE]
    [part] = manifest["parts"]
    assert (part["name"], part["offset"], part["rows"], part["deleted"]) == (f"p{version}", 0, 3, 0)
    part_dir = svc.storage.indexes_dir("docs") / PARTS_DIR / part["name"]
    assert sha256_file(part_dir / PART_FILE) == part["part_sha256"]
    part_meta = json.loads((part_dir / PART_FILE).read_text())
    assert part_meta["rows"] == 3 and part_meta["created_in"] == version
    assert part_meta["files"][INDEX_FILE]["sha256"] == sha256_file(part_dir / INDEX_FILE)

    pointer = svc.pointers.get("docs")
    assert pointer["version"] == version and pointer["fence"] == version
    assert svc.storage.resolve_relative(pointer["path"]) == version_dir
    assert pointer["checksum"] == manifest["checksum"]
    assert svc.locks.holder("docs") is None and svc.locks.pending("docs") is None
    assert temp_leftovers(env) == []

    loaded = open_version(version_dir, version)
    record = top_record(loaded, svc.embedder.embed(["pod priority preempt"])[0])
    assert record["doc_id"] == "kep-1"
    assert record["heading_path"] == ["Scheduling", "Pod priority"]
    assert record["metadata"] == {"source": "keps"}


def test_resubmitted_document_replaces_the_old_version(env):
    _, first = ingest_and_rebuild(env, DOCS)
    new_text = "# Storage\nSnapshots of volumes are taken by the CSI driver."
    _, second = ingest_and_rebuild(env, [{"id": "kep-2", "text": new_text}])
    assert second["result"]["version"] > first["result"]["version"]
    assert second["result"]["documents"] == 3 and second["result"]["vectors"] == 3
    records = served_records(env)
    by_doc = {rec["doc_id"]: rec["text"] for rec in records}
    assert sorted(by_doc) == ["kep-1", "kep-2", "kep-3"] and len(records) == 3
    assert by_doc["kep-2"] == "Snapshots of volumes are taken by the CSI driver."
    assert not any("resized online" in rec["text"] for rec in records)
    assert env.svc.collections.info("docs")["chunks"] == 3
    # The older version stays on disk untouched (the newer one marks the replaced rows deleted in its own
    # bitmap, never in the shared part): it still verifies and serves the old text. History lists both,
    # newest first.
    first_dir = env.svc.storage.version_dir("docs", first["result"]["version"])
    second_manifest = json.loads((env.svc.storage.version_dir("docs", second["result"]["version"])
                                  / MANIFEST_FILE).read_text())
    assert [(p["name"], p["rows"], p["deleted"]) for p in second_manifest["parts"]] == [
        (f"p{first['result']['version']}", 3, 1), (f"p{second['result']['version']}", 1, 0)]
    verify_version(first_dir)
    old = {rec["doc_id"]: rec["text"] for rec in live_records(open_version(first_dir, first["result"]["version"]))}
    assert "resized online" in old["kep-2"]
    assert [h["version"] for h in env.svc.pointers.history("docs")] == [second["result"]["version"],
                                                                         first["result"]["version"]]


def test_unchanged_text_reuses_vectors(env):
    svc = env.svc
    two_sections = {"id": "guide", "text": "# Install\nRun the installer.\n# Upgrade\nStop the service first."}
    first = ingest(env, [*DOCS, two_sections], rebuild=False)["result"]
    assert first["embedded"] == 5 and first["reused"] == 0

    again = ingest(env, DOCS, rebuild=False)["result"]
    assert again["embedded"] == 0 and again["reused"] == 3
    np.testing.assert_array_equal(svc.storage.read_segment_vectors("docs", again["segment"]),
                                  svc.storage.read_segment_vectors("docs", first["segment"])[:3])

    edited = {"id": "guide", "text": "# Install\nRun the installer.\n# Upgrade\nBack up the data, then upgrade."}
    partial = ingest(env, [edited], rebuild=False)["result"]
    assert partial["embedded"] == 1 and partial["reused"] == 1
    assert "rebuild_job_id" not in partial and env.enqueued_ids("rebuild") == []


def test_cancel_flag_stops_rebuild_before_anything_is_published(env):
    svc = env.svc
    _, first = ingest_and_rebuild(env, DOCS)
    job = ingest(env, [{"id": "kep-4", "text": "# New\nA fourth document."}])
    rebuild_id = job["result"]["rebuild_job_id"]
    assert svc.jobs.start(rebuild_id)  # a worker started it...
    assert svc.jobs.request_cancel(rebuild_id) == RUNNING  # ...and the user asked to cancel

    with pytest.raises(JobCanceled):
        run_rebuild(svc, rebuild_id)
    # Stopped at a build step, before writing anything (not only refused later by the publish script).
    stages = [json.loads(fields["data"]).get("stage") for _, fields in svc.redis.xrange(keys.events())
              if fields["job_id"] == rebuild_id and fields["type"] == "job.progress"]
    assert "build" in stages and not {"write", "verify", "publish"} & set(stages)
    assert svc.jobs.cancel(rebuild_id, "canceled by request")  # what the task layer does with JobCanceled
    assert svc.jobs.state(rebuild_id) == CANCELED
    assert svc.pointers.get("docs")["version"] == first["result"]["version"]
    indexes = svc.storage.indexes_dir("docs")
    assert sorted(p.name for p in indexes.iterdir()) == [PARTS_DIR, f"v{first['result']['version']}"]
    assert [p.name for p in (indexes / PARTS_DIR).iterdir()] == [f"p{first['result']['version']}"]
    assert svc.locks.holder("docs") is None
    assert temp_leftovers(env) == []


def test_cancel_arriving_at_publish_removes_the_built_version(env, monkeypatch):
    svc = env.svc
    job = ingest(env, DOCS)
    rebuild_id = job["result"]["rebuild_job_id"]
    progress = svc.jobs.progress

    def cancel_at_publish(job_id, stage, *args, **kwargs):
        if stage == "publish":
            assert svc.jobs.request_cancel(job_id) == RUNNING
        return progress(job_id, stage, *args, **kwargs)

    monkeypatch.setattr(svc.jobs, "progress", cancel_at_publish)
    with pytest.raises(JobCanceled):
        run_rebuild(svc, rebuild_id)
    assert svc.pointers.get("docs") is None
    assert svc.jobs.state(rebuild_id) == RUNNING  # the publish script did not mark it succeeded
    # The renamed version was removed, and the part it alone referenced.
    indexes = svc.storage.indexes_dir("docs")
    assert [p.name for p in indexes.iterdir()] == [PARTS_DIR]
    assert list((indexes / PARTS_DIR).iterdir()) == []
    assert svc.locks.holder("docs") is None


def test_rebuild_while_lease_is_held_raises_lock_busy(env):
    svc = env.svc
    job = ingest(env, DOCS)
    rebuild_id = job["result"]["rebuild_job_id"]
    other = svc.locks.acquire("docs", "e" * 32)
    with pytest.raises(LockBusy):
        run_rebuild(svc, rebuild_id)
    assert svc.jobs.state(rebuild_id) == QUEUED  # stays queued, to be retried
    assert svc.locks.pending("docs") == rebuild_id
    assert svc.locks.holder("docs")["job_id"] == "e" * 32  # the holder keeps its lease
    assert svc.pointers.get("docs") is None

    assert svc.locks.release(other)
    built = rebuild(env, rebuild_id)
    assert built["result"]["version"] > other.fence  # the retry fences off the earlier holder


def test_ingest_run_twice_registers_one_segment(env, monkeypatch):
    svc = env.svc
    job = submit_documents(svc, "docs", DOCS, rebuild=True)
    delete_staging = svc.storage.delete_staging
    crashes = []

    def crash_once(job_id):
        if not crashes:
            crashes.append(job_id)
            raise RuntimeError("worker lost after registering the segment")
        delete_staging(job_id)

    monkeypatch.setattr(svc.storage, "delete_staging", crash_once)
    with pytest.raises(RuntimeError):
        run_ingest(svc, job["id"])
    assert svc.jobs.state(job["id"]) == RUNNING
    assert len(svc.collections.segments("docs")) == 1

    run_ingest(svc, job["id"])  # the redelivered message
    done = svc.jobs.get(job["id"])
    assert done["state"] == SUCCEEDED
    assert svc.collections.segments("docs") == [done["result"]["segment"]]
    assert (done["result"]["documents"], done["result"]["chunks"]) == (3, 3)
    assert svc.collections.info("docs")["chunks"] == 3
    assert len(list(svc.storage.segments_dir("docs").iterdir())) == 1
    assert not svc.storage.staging_path(job["id"]).exists()

    run_ingest(svc, job["id"])  # a late duplicate after success is a no-op
    assert svc.collections.segments("docs") == [done["result"]["segment"]]
    assert env.enqueued_ids("rebuild") == [done["result"]["rebuild_job_id"]]
    assert svc.jobs.get(job["id"])["result"] == done["result"]


def test_rebuilds_coalesce_behind_one_pending_job(env):
    first = ingest(env, DOCS)
    second = ingest(env, [{"id": "kep-4", "text": "# New\nA fourth document."}])
    assert first["result"]["rebuild_job_id"] == second["result"]["rebuild_job_id"]
    built = rebuild(env, first["result"]["rebuild_job_id"])
    assert built["result"]["documents"] == 4 and built["result"]["vectors"] == 4


def test_ingest_into_missing_collection_is_an_input_error(env):
    job = submit_documents(env.svc, "nope", DOCS, rebuild=True)
    with pytest.raises(JobInputError):
        run_ingest(env.svc, job["id"])
    assert env.svc.collections.segments("nope") == []


def test_large_collection_gets_an_approximate_index_with_measured_recall(redis_url, rclient, tmp_path):
    enqueued: list[tuple[str, str]] = []
    settings = Settings(embedder="hash", data_dir=tmp_path, redis_url=redis_url, approx_threshold=500, ivf_nprobe=8,
                        recall_target=1.0, recall_floor=0.5)
    svc = make_services(settings, rclient, enqueued)
    svc.collections.create("big")
    docs = [{"id": f"d{i}", "text": f"# Area {i % 17}\nNote {i} covers subject{i % 101} and detail{i}."}
            for i in range(800)]
    job = submit_documents(svc, "big", docs, rebuild=True)
    run_ingest(svc, job["id"])
    rebuild_id = svc.jobs.get(job["id"])["result"]["rebuild_job_id"]
    run_rebuild(svc, rebuild_id)
    result = svc.jobs.get(rebuild_id)["result"]
    # nprobe is tuned up the ladder 1, 2, 4, 8 (ivf_nprobe caps it) towards the recall target.
    assert result["kind"] == "ivf-flat-ip" and result["nprobe"] in (1, 2, 4, 8) and result["nlist"] >= 16
    assert 0.5 <= result["recall_at_10"] <= 1.0 and "measure" in result["timings"]
    assert result["recall_target"] == 1.0
    pointer = svc.pointers.get("big")
    loaded = open_version(svc.storage.resolve_relative(pointer["path"]), pointer["version"])
    assert pointer["kind"] == "ivf-flat-ip" and loaded.vectors == 800
    assert loaded.manifest["format"] == 2 and [p["kind"] for p in (
        json.loads((svc.storage.indexes_dir("big") / PARTS_DIR / part["name"] / PART_FILE).read_text())
        for part in loaded.manifest["parts"])] == ["ivf-flat-ip"]
    query = svc.embedder.embed(["Note 123 covers subject22 and detail123."])[0]
    assert top_record(loaded, query)["doc_id"] == "d123"
