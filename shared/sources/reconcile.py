"""The reconcile job: bring a collection in line with a source folder, without blocking a worker.

1. Plan (`shared.sources.plan`): walk the tree, or ask git what changed since the indexed commit, or
   take only the paths a watcher saw change, and compare each file with what the collection holds:
   size and mtime first; the content hash only when those changed (a touched file with the same
   content is recorded, not ingested).
2. Tombstone files that are gone (or can no longer be indexed) in one segment.
3. Fan the new and changed files out as child `ingest_files` jobs of `source_batch_files` files each,
   on the ingest queue, so every ingest worker takes some; record the barrier; return.
4. The last child to end finishes the parent and asks for the one rebuild (`shared.sources.finish`);
   only then is a git source's commit recorded. Until then the old commit stays, with the files this
   run reads added to its recheck at plan time, so a failed or crashed run diffs from the old commit
   again and still looks at them. A run that walks instead (git unavailable, a fallback, a recheck
   too large) clears the old commit at plan time, before any file is read for ingest: the next run
   walks rather than diffing from a commit older than what this one read.

A remove job (`options.remove`) tombstones every file of the source and forgets the source, after
stopping the source's running reconcile.
"""

from __future__ import annotations

import json
import logging
import time

from shared.errors import JobCanceled, JobInputError, LockBusy
from shared.jobkinds import INGEST_FILES
from shared.jobs.deletion import write_tombstones
from shared.jobs.fromdisk import save_sources
from shared.jobs.submit import request_cancel_tree, request_rebuild
from shared.jobstates import QUEUED, RUNNING, TERMINAL, new_job_id
from shared.services import Services
from shared.sources.finish import finish_reconcile, resume
from shared.sources.paths import SourcePathRefused, check_source_root
from shared.sources.plan import MAX_RECHECK, make_plan
from shared.store.conn import confirm

log = logging.getLogger(__name__)

BATCH_BYTES = 2 * 1024 * 1024  # a child batch also ends past this much text, so batches cost alike


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
    started = time.monotonic()
    plan = make_plan(svc, source, folder, options.get("paths"), job_id)
    if plan.gone:
        write_tombstones(svc, job_id, collection, [source["prefix"] + p for p in plan.gone])
        svc.sources.record_files(source["id"], {}, plan.gone)
    if plan.touched:
        svc.sources.record_files(source["id"], plan.touched, [])
    summary = {**plan.summary(), "plan_seconds": round(time.monotonic() - started, 3)}
    git_state = plan.git_state()
    _keep_git_state_honest(svc, source, collection, git_state)
    svc.jobs.set_fields(job_id, plan=json.dumps(summary), **({"git": json.dumps(git_state)} if git_state else {}))
    log.info("event=reconcile.plan job=%s source=%s walk=%s git_commit=%s fallback=%s examined=%s added=%s "
             "changed=%s removed=%s seconds=%s", job_id, source["id"], plan.walk, plan.git_commit,
             plan.git_fallback, len(plan.files), len(plan.added), len(plan.changed), len(plan.gone),
             summary["plan_seconds"])
    if svc.jobs.cancel_requested(job_id):
        raise JobCanceled(job_id)
    _fan_out(svc, job_id, collection, source, sorted(plan.added + plan.changed, key=lambda e: e[0]),
             plan.git_commit)


def _keep_git_state_honest(svc: Services, source: dict, collection: str, git_state: dict | None) -> None:
    """Before anything is ingested: a plan that cannot record a commit forgets the recorded one (what it
    reads may be reverted later, unseen by a diff from that commit); one that will record a commit adds
    the files it reads to the recheck, in case the run fails or crashes and the old commit stays."""
    if git_state is None:
        if source.get("git_commit"):
            svc.sources.clear_git_state(source["id"])
            save_sources(svc, collection)  # the data dir keeps the commit too
            log.info("event=reconcile.git_state_cleared source=%s note=%r", source["id"],
                     "no commit recorded: the next reconcile walks the tree")
    elif "commit" in git_state:
        svc.sources.add_recheck(source["id"], git_state["recheck"], MAX_RECHECK)


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


def _fan_out(svc: Services, job_id: str, collection: str, source: dict, files: list[tuple[str, int]],
            source_commit: str | None = None) -> None:
    """Create the children, record the barrier, then enqueue them: a child can only end after its
    barrier exists. With nothing to ingest the parent finishes now."""
    batches = _batches(files, max(1, svc.settings.source_batch_files))
    children = {new_job_id(): batch for batch in batches}
    svc.jobs.set_fields(job_id, children=json.dumps(list(children)))
    for child, paths in children.items():
        # Unbounded: the parent was accepted (202), so its work must not be refused half-way.
        svc.jobs.create(INGEST_FILES.name, collection, {"parent": job_id, "source": source["id"], "paths": paths,
                                                        **({"source_commit": source_commit} if source_commit else {})},
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
        # The source's documents go because its removal was asked for, not by accident (a folder found
        # empty by a reconcile): the shrink guard (shared.jobs.gate) does not count them, and only them.
        # Canaries still apply: a removal that loses what a canary guards needs a forced rebuild.
        rebuild_job, _ = request_rebuild(svc, raw["collection"], exclusive=False, allow_shrink=removed)
        result["rebuild_job_id"] = rebuild_job["id"]
    svc.jobs.succeed(job_id, result)
    log.info("event=source.removed job=%s source=%s files=%s", job_id, source_id, removed)
