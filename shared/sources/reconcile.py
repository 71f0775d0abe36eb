"""The reconcile job: bring a collection in line with a source folder, without blocking a worker.

1. Walk the tree (or only the paths a watcher saw change) and compare each file with what the
   collection holds: size and mtime first; the content hash only when those changed (a touched file
   with the same content is recorded, not ingested).
2. Tombstone files that are gone (or can no longer be indexed) in one segment.
3. Fan the new and changed files out as child `ingest_files` jobs of `source_batch_files` files each,
   on the ingest queue, so every ingest worker takes some; record the barrier; return.
4. The last child to end finishes the parent and asks for the one rebuild (`shared.sources.finish`).

A remove job (`options.remove`) tombstones every file of the source and forgets the source, after
stopping the source's running reconcile.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from shared import eventnames as names
from shared.errors import JobCanceled, JobInputError, LockBusy
from shared.jobkinds import INGEST_FILES
from shared.jobs.deletion import write_tombstones
from shared.jobs.fromdisk import save_sources
from shared.jobs.progress import ProgressReporter
from shared.jobs.submit import request_cancel_tree, request_rebuild
from shared.jobstates import QUEUED, RUNNING, TERMINAL, new_job_id
from shared.services import Services
from shared.sources.files import content_problem, digest, read_in_source
from shared.sources.finish import finish_reconcile, resume
from shared.sources.paths import SourcePathRefused, check_source_root
from shared.sources.walk import IGNORE_FILE, Rules, under, walk_tree
from shared.store.conn import confirm
from shared.store.sources import FileState

log = logging.getLogger(__name__)

BATCH_BYTES = 2 * 1024 * 1024  # a child batch also ends past this much text, so batches cost alike
CANCEL_EVERY = 500


def run_reconcile(svc: Services, job_id: str) -> None:
    options = json.loads(svc.jobs.raw(job_id).get("options") or "{}")
    if options.get("remove"):
        run_remove(svc, job_id, options["source"])
        return
    raw = svc.jobs.begin(job_id)
    if raw is None:
        svc.sources.release_reconcile(options["source"], job_id)
        return
    if raw.get("fanout") == "open":
        resume(svc, job_id)
        return
    try:
        _reconcile(svc, job_id, raw, options)
    except BaseException:
        if svc.jobs.field(job_id, "fanout") != "open":
            svc.sources.release_reconcile(options["source"], job_id)
        raise


def _reconcile(svc: Services, job_id: str, raw: dict, options: dict) -> None:
    collection = raw["collection"]
    source = svc.sources.get(options["source"])
    if source is None:
        raise JobInputError(f"source {options['source']} was removed")
    if not svc.collections.exists(collection):
        raise JobInputError(f"collection {collection!r} does not exist")
    if raw.get("children"):  # a run that crashed before its barrier: its children never ran
        for child in json.loads(raw["children"]):
            if svc.jobs.state(child) == QUEUED:
                svc.jobs.request_cancel(child, "replaced by a new plan of its parent")
    try:
        folder = check_source_root(svc.settings, source["path"])
    except SourcePathRefused as refused:
        raise JobInputError(refused.message) from None
    paths = options.get("paths")
    if paths is not None and any(p.rsplit("/", 1)[-1] == IGNORE_FILE for p in paths):
        paths = None  # a changed .gitignore can change what belongs anywhere below it
    rules = Rules(folder, source["include"], source["exclude"], svc.settings.max_document_bytes)
    svc.jobs.progress(job_id, names.STAGE_WALK, 0, 0)
    walk = walk_tree(rules, paths)
    held = svc.sources.files(source["id"])
    in_scope = held if paths is None else {p: s for p, s in held.items() if under(p, paths)}
    plan = _compare(svc, job_id, folder, walk.files, held)
    gone = sorted((set(in_scope) - set(walk.files)) | set(plan["unreadable_held"]))
    if gone:
        write_tombstones(svc, job_id, collection, [source["prefix"] + p for p in gone])
        svc.sources.record_files(source["id"], {}, gone)
    if plan["touched"]:
        svc.sources.record_files(source["id"], plan["touched"], [])
    skipped = walk.skipped + plan["skipped"]
    summary = {"files_seen": len(walk.files), "files_added": len(plan["added"]),
               "files_changed": len(plan["changed"]), "files_removed": len(gone),
               "files_skipped": sum(skipped.values()), "files_secret": skipped.get("secret", 0),
               "files_unchanged": plan["unchanged"],
               "skipped": dict(skipped), "skipped_dirs": walk.skipped_dirs}
    svc.jobs.set_fields(job_id, plan=json.dumps(summary))
    if svc.jobs.cancel_requested(job_id):
        raise JobCanceled(job_id)
    _fan_out(svc, job_id, collection, source, sorted(plan["added"] + plan["changed"], key=lambda e: e[0]))


def _compare(svc: Services, job_id: str, folder, files: dict, held: dict[str, FileState]) -> dict:
    """Split the walked files into added, changed, unchanged and touched (same content, new mtime),
    reading only those whose size or mtime moved."""
    out: dict[str, Any] = {"added": [], "changed": [], "unchanged": 0, "touched": {}, "skipped": Counter(),
                           "unreadable_held": []}
    candidates = []
    for rel, entry in files.items():
        state = held.get(rel)
        if state is not None and state.size == entry.size and state.mtime_ns == entry.mtime_ns:
            out["unchanged"] += 1
        else:
            candidates.append((rel, entry, state))
    progress = ProgressReporter(svc.jobs, job_id, names.STAGE_COMPARE, len(candidates), svc.settings.progress_every)
    for i, (rel, _entry, state) in enumerate(candidates):
        if i % CANCEL_EVERY == 0 and svc.jobs.cancel_requested(job_id):
            raise JobCanceled(job_id)
        progress.update(i)
        try:
            read = read_in_source(folder, rel, svc.settings.max_document_bytes)
        except FileNotFoundError:
            continue  # gone since the walk: not in the tree
        info, data, problem = read
        if problem is None:
            assert data is not None  # a read without a problem holds the bytes
            problem, _ = content_problem(data, svc.settings.max_document_bytes)
        if problem:
            out["skipped"][problem] += 1
            if state is not None:
                out["unreadable_held"].append(rel)
            continue
        assert info is not None and data is not None  # a read without a problem has both
        new = FileState(info.st_size, info.st_mtime_ns, digest(data))
        if state is not None and state.digest == new.digest:
            out["touched"][rel] = new
        else:
            out["changed" if state is not None else "added"].append((rel, len(data)))
    progress.finish()
    return out


def _batches(files: list[tuple[str, int]], size: int) -> list[list[str]]:
    batches: list[list[str]] = []
    current: list[str] = []
    used = 0
    for rel, nbytes in files:
        if current and (len(current) >= size or used + nbytes > BATCH_BYTES):
            batches.append(current)
            current, used = [], 0
        current.append(rel)
        used += nbytes
    if current:
        batches.append(current)
    return batches


def _fan_out(svc: Services, job_id: str, collection: str, source: dict, files: list[tuple[str, int]]) -> None:
    """Create the children, record the barrier, then enqueue them: a child can only end after its
    barrier exists. With nothing to ingest the parent finishes now."""
    batches = _batches(files, max(1, svc.settings.source_batch_files))
    children = {new_job_id(): batch for batch in batches}
    svc.jobs.set_fields(job_id, children=json.dumps(list(children)))
    for child, paths in children.items():
        # Unbounded: the parent was accepted (202), so its work must not be refused half-way.
        svc.jobs.create(INGEST_FILES.name, collection, {"parent": job_id, "source": source["id"], "paths": paths},
                        child)
    svc.fanout.open(job_id, {child: len(paths) for child, paths in children.items()})
    for child in children:
        svc.enqueue(INGEST_FILES.name, child)
    confirm(svc.redis)
    log.info("event=reconcile.fanout job=%s collection=%s source=%s files=%s batches=%s",
             job_id, collection, source["id"], len(files), len(children))
    if not children:
        finish_reconcile(svc, job_id)


def run_remove(svc: Services, job_id: str, source_id: str) -> None:
    """Remove a source: stop its reconcile (LockBusy until it has ended), tombstone its files, forget it."""
    if svc.jobs.state(job_id) in TERMINAL:
        return
    source = svc.sources.get(source_id)
    holder = svc.sources.reconcile_holder(source_id) if source else None
    if holder and holder != job_id:
        if svc.jobs.state(holder) in (QUEUED, RUNNING):
            svc.jobs.start(job_id)
            request_cancel_tree(svc, holder, "its source is being removed")
            svc.jobs.touch(job_id)
            raise LockBusy(f"source={source_id} waiting for reconcile {holder} to stop")
        svc.sources.release_reconcile(source_id, holder)
    raw = svc.jobs.begin(job_id)
    if raw is None:
        return
    removed = 0
    if source is not None:
        svc.sources.claim_reconcile(source_id, job_id)
        held = sorted(svc.sources.files(source_id))
        if held and svc.collections.exists(raw["collection"]):
            write_tombstones(svc, job_id, raw["collection"], [source["prefix"] + p for p in held])
        removed = len(held)
        svc.sources.remove(source_id)
        if svc.collections.exists(raw["collection"]):
            save_sources(svc, raw["collection"])
    result = {"source": source_id, "files_removed": removed}
    if removed and svc.collections.exists(raw["collection"]):
        # Forced: the source's documents go because its removal was asked for, not by accident (a folder
        # found empty by a reconcile), so the shrink guard (shared.jobs.gate) does not stop it.
        rebuild_job, _ = request_rebuild(svc, raw["collection"], exclusive=False, force=True)
        result["rebuild_job_id"] = rebuild_job["id"]
    svc.jobs.succeed(job_id, result)
    log.info("event=source.removed job=%s source=%s files=%s", job_id, source_id, removed)
