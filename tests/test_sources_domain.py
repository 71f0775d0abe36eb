"""Sources domain code called directly (no Celery) on fakeredis and the session's redis-server, with
the hashing embedder; enqueued jobs are run by a small pump in the test, in order."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from shared.errors import JobInProgress, LockBusy
from shared.jobs.compact import run_compact, should_compact
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import cancel_job, submit_documents
from shared.jobstates import CANCELED, SUCCEEDED
from shared.services import Services
from shared.settings import Settings
from shared.sources.batch import run_batch
from shared.sources.reconcile import run_reconcile
from shared.sources.submit import add_source, remove_source, submit_reconcile
from shared.sources.watching import FULL, WatchManager
from tests.sourcetree import INDEXED, make_tree
from tests.support import make_services

RUNNERS = {"reconcile": run_reconcile, "ingest_files": run_batch, "rebuild": run_rebuild, "ingest": run_ingest,
           "compact": run_compact}


class Env:
    def __init__(self, client, tmp_path: Path, **overrides):
        self.queue: list[tuple[str, str]] = []
        self.roots = tmp_path / "roots"
        self.roots.mkdir(exist_ok=True)
        settings = Settings(embedder="hash", data_dir=tmp_path / "data", source_roots=str(self.roots),
                            source_batch_files=2, **overrides)
        self.svc: Services = make_services(settings, client, enqueued=self.queue)
        self.svc.collections.create("docs")

    def pump(self, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """Run queued jobs until none is left; returns what ran."""
        ran = []
        while self.queue:
            kind, job_id = self.queue.pop(0)
            if kind in skip:
                continue
            RUNNERS[kind](self.svc, job_id)
            ran.append((kind, job_id))
        return ran

    def job(self, job_id: str) -> dict:
        return self.svc.jobs.get(job_id)


@pytest.fixture
def env(client, tmp_path):
    return Env(client, tmp_path)


def test_second_reconcile_of_an_unchanged_tree_embeds_nothing_and_rebuilds_nothing(env):
    make_tree(env.roots / "orchard")
    source, job = add_source(env.svc, "docs", "orchard", [], [], False)
    ran = env.pump()
    assert [k for k, _ in ran].count("rebuild") == 1  # exactly one rebuild after the batches
    assert [k for k, _ in ran].count("ingest_files") == 3  # 5 files in batches of 2
    first = env.job(job["id"])
    assert first["state"] == SUCCEEDED and first["result"]["files_added"] == len(INDEXED)
    counts = first["progress"]["counts"]
    assert counts["batches"] == counts["batches_done"] == 3 and counts["files_added"] == len(INDEXED)
    assert counts["chunks_embedded"] == first["result"]["chunks_embedded"] and counts["eta_seconds"] == 0
    assert (first["progress"]["done"], first["progress"]["total"]) == (len(INDEXED), len(INDEXED))
    assert env.svc.collections.info("docs")["documents"] == len(INDEXED)
    again = submit_reconcile(env.svc, source)
    ran = env.pump()
    assert [k for k, _ in ran] == ["reconcile"]
    result = env.job(again["id"])["result"]
    assert result["chunks_embedded"] == 0 and result["files_unchanged"] == len(INDEXED)
    assert env.svc.sources.get(source["id"])["last_reconcile"]["job_id"] == again["id"]


def test_a_touched_file_is_recorded_not_ingested_and_a_path_reconcile_sees_only_its_paths(env):
    tree = make_tree(env.roots / "orchard")
    source, _ = add_source(env.svc, "docs", "orchard", [], [], False)
    env.pump()
    os.utime(tree / "README.md", ns=(time.time_ns(), time.time_ns() + 10**9))
    job = submit_reconcile(env.svc, source)
    ran = env.pump()
    assert [k for k, _ in ran] == ["reconcile"]
    assert env.job(job["id"])["result"]["files_unchanged"] == len(INDEXED) - 1
    assert env.svc.sources.files(source["id"])["README.md"].mtime_ns == (tree / "README.md").stat().st_mtime_ns

    (tree / "docs" / "irrigation.md").unlink()
    (tree / "notes.txt").unlink()  # outside the paths: left for a full reconcile
    job = submit_reconcile(env.svc, source, paths=["docs"])
    env.pump()
    result = env.job(job["id"])["result"]
    assert result["files_removed"] == 1 and result["files_seen"] == 1 and result["paths"] == ["docs"]
    assert "notes.txt" in env.svc.sources.files(source["id"])
    job = submit_reconcile(env.svc, source)
    env.pump()
    assert env.job(job["id"])["result"]["files_removed"] == 1
    assert set(env.svc.sources.files(source["id"])) == INDEXED - {"docs/irrigation.md", "notes.txt"}


def test_one_reconcile_per_source_at_a_time(env):
    make_tree(env.roots / "orchard")
    source, job = add_source(env.svc, "docs", "orchard", [], [], False)
    with pytest.raises(JobInProgress) as busy:
        submit_reconcile(env.svc, source)
    assert busy.value.job_id == job["id"]
    env.pump()
    submit_reconcile(env.svc, source)  # free again once it finished


def test_canceling_a_fanned_out_reconcile_cancels_queued_children_and_it_ends_canceled(env):
    make_tree(env.roots / "orchard")
    _, job = add_source(env.svc, "docs", "orchard", [], [], False)
    kind, parent = env.queue.pop(0)
    run_reconcile(env.svc, parent)
    children = [job_id for k, job_id in env.queue if k == "ingest_files"]
    assert len(children) == 3
    run_batch(env.svc, children[0])  # one finished before the cancel
    after = cancel_job(env.svc, parent)
    assert after["state"] == "running" and after["cancel_requested"]
    assert [env.svc.jobs.state(c) for c in children[1:]] == [CANCELED, CANCELED]
    env.pump()  # the workers receive the canceled children: they count themselves and finish the parent
    assert env.job(parent)["state"] == CANCELED
    assert not env.svc.sources.reconcile_holder(env.svc.jobs.options(parent)["source"])
    assert [k for k, _ in env.queue] == []


def test_a_redelivered_parent_finishes_once_its_children_ended(env):
    make_tree(env.roots / "orchard")
    _, job = add_source(env.svc, "docs", "orchard", [], [], False)
    run_reconcile(env.svc, env.queue.pop(0)[1])
    for _, child in [q for q in env.queue if q[0] == "ingest_files"]:
        env.svc.jobs.start(child)
        env.svc.jobs.succeed(child, {"embedded": 1, "reused": 0})  # ended without counting itself
    run_reconcile(env.svc, job["id"])  # the sweeper sent the parent again
    assert env.job(job["id"])["state"] == SUCCEEDED


def test_removing_a_source_tombstones_its_documents_and_forgets_it(env):
    make_tree(env.roots / "orchard")
    source, _ = add_source(env.svc, "docs", "orchard", [], [], True)
    env.pump()
    running = submit_reconcile(env.svc, source)
    env.queue.clear()
    env.svc.jobs.start(running["id"])  # a reconcile runs: the removal waits for it to stop
    job = remove_source(env.svc, env.svc.sources.get(source["id"]))
    assert env.svc.sources.get(source["id"])["watch"] is False  # watching stops at once
    with pytest.raises(LockBusy):
        run_reconcile(env.svc, job["id"])
    assert env.svc.jobs.cancel_requested(running["id"])
    env.svc.jobs.cancel(running["id"])
    run_reconcile(env.svc, job["id"])
    assert env.job(job["id"])["result"]["files_removed"] == len(INDEXED)
    assert env.svc.sources.get(source["id"]) is None and env.svc.sources.of_collection("docs") == []
    env.pump()
    assert env.svc.collections.info("docs")["documents"] == 0


def test_the_embedding_cache_serves_other_collections_and_survives_a_restart(client, tmp_path):
    first = Env(client, tmp_path)
    make_tree(first.roots / "orchard")
    _, job = add_source(first.svc, "docs", "orchard", [], [], False)
    first.pump()
    embedded = first.job(job["id"])["result"]["chunks_embedded"]
    assert embedded > 0
    first.svc.embed_cache.close()
    second = Env(client, tmp_path)  # another process: same data dir, cache opened again
    second.svc.collections.create("other")
    _, job = add_source(second.svc, "other", "orchard", [], [], False)
    second.pump()
    result = second.job(job["id"])["result"]
    assert result["chunks_embedded"] == 0 and result["chunks_reused"] == embedded


def test_the_embedding_cache_is_bounded(client, tmp_path):
    env = Env(client, tmp_path, embed_cache_bytes=2_000_000)
    cache = env.svc.embed_cache
    for i in range(20):  # 2,000 vectors of 1.5 KiB: more than the bound holds
        cache.put_many("m", {f"{i}-{j}": np.full(384, j, dtype=np.float32) for j in range(100)})
    assert cache.volume() <= 2_000_000
    assert len(cache.get_many("m", [f"19-{j}" for j in range(100)], 384)) == 100  # the newest stay
    assert cache.get_many("m", [f"0-{j}" for j in range(100)], 384) == {}  # the oldest went first


def test_compaction_keeps_every_document_and_an_ingest_landing_meanwhile_wins(env):
    for i in range(6):
        submit_documents(env.svc, "docs", [{"id": f"d{i}", "text": f"# Doc {i}\nplum {i}"},
                                           {"id": "shared", "text": f"# Shared\nversion {i}"}], rebuild=False)
    env.pump()
    before = env.svc.collections.info("docs")
    assert len(env.svc.collections.segments("docs")) == 6
    real_replace = env.svc.collections.replace_segments

    def ingest_lands_meanwhile(*args, **kwargs):
        # Between the compaction's snapshot and its swap, an ingest registers a newer "shared".
        submit_documents(env.svc, "docs", [{"id": "shared", "text": "# Shared\nnewest"}], rebuild=False)
        env.pump()
        return real_replace(*args, **kwargs)

    env.svc.collections.replace_segments = ingest_lands_meanwhile
    job = env.svc.jobs.create("compact", "docs", {})
    run_compact(env.svc, job["id"])
    env.svc.collections.replace_segments = real_replace
    result = env.job(job["id"])["result"]
    assert result["segments_before"] == 6 and result["segments_after"] == 2  # the merged one + the newer
    assert result["rows_before"] == 12 and result["rows_after"] == 7
    assert result["bytes_after"] < result["bytes_before"] + env.svc.storage.segment_bytes(
        "docs", env.svc.collections.segments("docs")[1])
    after = env.svc.collections.info("docs")
    assert (after["documents"], after["chunks"]) == (before["documents"], 7)
    assert after["changes"] == before["changes"] + 1  # the ingest; compaction changes nothing live
    rebuild = env.svc.jobs.create("rebuild", "docs", {})
    run_rebuild(env.svc, rebuild["id"])
    assert env.job(rebuild["id"])["result"]["vectors"] == 7 and env.job(rebuild["id"])["result"]["documents"] == 7
    merged, newer = env.svc.collections.segments("docs")
    texts = {rec["doc_id"]: rec["text"] for seq in (merged, newer)
             for rec in env.svc.storage.iter_segment_records("docs", seq)}
    assert texts["shared"] == "newest"
    assert env.svc.collections.doc_locations("docs", ["shared", "d0"]) == {"shared": newer, "d0": merged}
    assert not env.svc.storage.segment_dir("docs", 1).exists()  # the replaced folders are gone
    # A stale head is refused and changes nothing.
    assert not env.svc.collections.replace_segments("docs", [1, 2], 99, {"d0": 1})
    assert env.svc.collections.segments("docs") == [merged, newer]


def test_compaction_waits_for_a_running_rebuild_before_deleting_and_never_takes_the_lease(env):
    for i in range(3):
        submit_documents(env.svc, "docs", [{"id": f"d{i}", "text": f"# Doc {i}\nfig {i}"}], rebuild=False)
    env.pump()
    old = env.svc.collections.segments("docs")
    lease = env.svc.locks.acquire("docs", "a-running-rebuild")  # snapshotted before the swap, say
    job = env.svc.jobs.create("compact", "docs", {})
    with pytest.raises(LockBusy):
        run_compact(env.svc, job["id"])
    assert env.svc.jobs.state(job["id"]) == "running" and len(env.svc.collections.segments("docs")) == 1
    assert all(env.svc.storage.segment_dir("docs", seq).is_dir() for seq in old)  # still readable
    assert env.svc.locks.holder("docs")["job_id"] == "a-running-rebuild"
    env.svc.locks.release(lease)
    run_compact(env.svc, job["id"])  # the retry resumes at the deletion step
    assert env.job(job["id"])["result"]["segments_after"] == 1
    assert not any(env.svc.storage.segment_dir("docs", seq).exists() for seq in old)


def test_compaction_thresholds_at_the_defaults():
    svc_settings = Settings()
    assert (svc_settings.compact_min_segments, svc_settings.compact_superseded_ratio) == (32, 0.5)

    class Svc:
        settings = svc_settings

    assert should_compact(Svc, 32, 100, 100) and not should_compact(Svc, 31, 100, 60)
    assert should_compact(Svc, 3, 100, 50) and not should_compact(Svc, 1, 100, 0)


def test_one_watcher_holds_a_source_and_another_takes_over_at_the_default_lease(env):
    make_tree(env.roots / "orchard")
    source, _ = add_source(env.svc, "docs", "orchard", [], [], True)
    assert env.svc.settings.watch_lease_seconds == 30
    a, b = WatchManager(env.svc, "a"), WatchManager(env.svc, "b")
    try:
        a.sync()
        b.sync()
        assert list(a.watches) == [source["id"]] and b.watches == {}
        assert a.pending == {source["id"]: FULL}  # the catch-up reconcile
        assert a.flush() == [] and a.pending  # the first reconcile still queued: kept for later
        env.pump()
        submitted = a.flush()
        assert len(submitted) == 1 and a.pending == {}
        env.pump()
        a.note(source["id"], {"README.md"})
        a.note(source["id"], {"docs/guide.md"})
        assert a.pending == {source["id"]: {"README.md", "docs/guide.md"}}
        a.close()  # releases the lease
        b.sync()
        assert list(b.watches) == [source["id"]]
        assert env.svc.sources.watch_holder(source["id"]) == "b"
        env.svc.sources.set_watch(source["id"], False)
        b.sync()
        assert b.watches == {} and env.svc.sources.watch_holder(source["id"]) is None
    finally:
        a.close()
        b.close()


def test_compaction_repoints_documents_in_batches_and_a_repeated_call_changes_nothing(env, monkeypatch):
    """The list swap and each batch of repointed documents are script calls of their own (one call over
    2M documents held Redis 10.5 s); a call repeated after its reply was lost answers True and only
    repoints again, and a document a newer segment holds keeps pointing there."""
    from shared.store import collections as store

    monkeypatch.setattr(store, "REPOINT_BATCH", 2)
    cols = env.svc.collections
    cols.register_segment("docs", 1, "j1", {f"d{i}": 1 for i in range(5)})
    cols.register_segment("docs", 2, "j2", {"d5": 2})
    cols.register_segment("docs", 3, "j3", {"d0": 3})  # newer: d0 lives here, not in what is merged
    merged = {**{f"d{i}": 1 for i in range(5)}, "d5": 2}
    calls = []
    real = cols._replace
    monkeypatch.setattr(cols, "_replace", lambda keys, args: calls.append(args) or real(keys=keys, args=args))
    assert cols.replace_segments("docs", [1, 2], 4, merged)
    assert len(calls) == 4  # 6 documents, 2 a call, then the call that finds the batch short
    assert cols.segments("docs") == [4, 3]
    where = cols.doc_locations("docs", [*merged, "d0"])
    assert where == {**dict.fromkeys(["d1", "d2", "d3", "d4", "d5"], 4), "d0": 3}
    assert cols.replace_segments("docs", [1, 2], 4, merged)  # a retry of the whole: nothing moves
    assert cols.segments("docs") == [4, 3] and cols.doc_locations("docs", list(merged)) == {
        **{d: 4 for d in merged if d != "d0"}, "d0": 3}


def test_registering_a_segment_again_changes_nothing(env):
    """A registration repeated after its reply was lost (the client retries on a timeout) neither pushes
    the segment twice nor counts its changes twice."""
    cols = env.svc.collections
    job = env.svc.jobs.create("ingest", "docs", {})
    first = cols.register_segment("docs", 41, job["id"], {"a": 2, "b": 1})
    changes = cols.info("docs")["changes"]
    assert cols.register_segment("docs", 41, job["id"], {"a": 2, "b": 1}) == first
    assert cols.segments("docs").count(41) == 1 and cols.info("docs")["changes"] == changes
