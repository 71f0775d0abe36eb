"""The end of a fanned-out reconcile: each child counts itself into its parent's barrier, the parent's
progress is the sum of its children, and the child that finishes last finishes the parent (exactly one
rebuild, the source's last_reconcile and, for a git source, its indexed commit, the slot freed). A parent
delivered again (the sweeper re-sends a parent whose heartbeat went stale) settles children that ended
without counting themselves."""

from __future__ import annotations

import json
import logging
import time

from shared import eventnames as names
from shared.jobs.fromdisk import save_sources
from shared.jobs.submit import request_rebuild
from shared.jobstates import FAILED, SUCCEEDED, TERMINAL
from shared.services import Services
from shared.sources.plan import MAX_RECHECK

log = logging.getLogger(__name__)

RESULT_COUNTS = ("files_seen", "files_added", "files_changed", "files_removed", "files_skipped", "files_secret",
                 "chunks_embedded", "chunks_reused")
FAILED_NAMED = 20  # files a failed reconcile's error names; the result lists them all


def _options(raw: dict) -> dict:
    return json.loads(raw.get("options") or "{}")


def settle_child(svc: Services, child_id: str) -> None:
    """Count a child that has ended (any state) into its parent's barrier, once; finish the parent
    when it was the last."""
    raw = svc.jobs.find(child_id)
    if not raw or raw.get("state") not in TERMINAL:
        return
    options = _options(raw)
    parent = options.get("parent")
    if not parent:
        return
    result = json.loads(raw.get("result") or "{}")
    paths = options.get("paths") or []
    failed = raw["state"] == FAILED
    remaining = svc.fanout.child_done(parent, child_id, len(paths) if raw["state"] == SUCCEEDED else 0,
                                      int(result.get("embedded", 0)), int(result.get("reused", 0)),
                                      failed=failed, failed_files=paths if failed else [])
    if remaining == 0:
        finish_reconcile(svc, parent)
    elif remaining > 0:
        report_progress(svc, parent)


def report_progress(svc: Services, parent_id: str) -> None:
    """The parent's progress: files its children ingested of those it fanned out, their rate, and the
    running sums of their counts."""
    state = svc.fanout.state(parent_id)
    if state is None:
        return
    elapsed = max(time.time() - state["started_at"], 1e-6)
    rate = state["files_done"] / elapsed if state["files_done"] else None
    plan = json.loads(svc.jobs.field(parent_id, "plan") or "{}")
    counts = {**{k: plan.get(k, 0) for k in RESULT_COUNTS}, "chunks_embedded": state["chunks_embedded"],
              "chunks_reused": state["chunks_reused"], "batches_done": state["total"] - state["remaining"],
              "batches": state["total"], "files_per_second": round(rate, 2) if rate else None,
              "eta_seconds": round((state["files_total"] - state["files_done"]) / rate, 1) if rate else None}
    svc.jobs.set_fields(parent_id, counts=json.dumps(counts))
    svc.jobs.progress(parent_id, names.STAGE_INGEST, state["files_done"], state["files_total"], rate)


def _needs_rebuild(svc: Services, collection: str) -> bool:
    """Something changed since the served index was built (or none was ever built)."""
    pointer = svc.pointers.get(collection)
    return pointer is None or svc.collections.info(collection)["changes"] > pointer.get("changes", 0)


def finish_reconcile(svc: Services, parent_id: str) -> None:
    """Finish a reconcile whose children have all ended. Safe to call twice: transitions happen once."""
    raw = svc.jobs.find(parent_id)
    if not raw or raw["state"] in TERMINAL:
        return
    options, collection = _options(raw), raw["collection"]
    report_progress(svc, parent_id)  # the last child's share shows too
    plan = json.loads(raw.get("plan") or "{}")
    state = svc.fanout.state(parent_id) or {"total": 0, "chunks_embedded": 0, "chunks_reused": 0,
                                            "failed_files": [], "children_failed": 0}
    result = {**{k: plan.get(k, 0) for k in RESULT_COUNTS}, "chunks_embedded": state["chunks_embedded"],
              "chunks_reused": state["chunks_reused"], "files_unchanged": plan.get("files_unchanged", 0),
              "walk": plan.get("walk", "tree"), "git_commit": plan.get("git_commit"),
              **({"git_fallback": plan["git_fallback"]} if plan.get("git_fallback") else {}),
              "skipped": plan.get("skipped", {}), "batches": state["total"], "paths": options.get("paths"),
              "files_failed": state["failed_files"]}
    try:
        if svc.jobs.cancel_requested(parent_id):
            svc.jobs.cancel(parent_id, "canceled by request")
            outcome = "canceled"
        else:
            if svc.collections.exists(collection) and _needs_rebuild(svc, collection):
                rebuild_job, _ = request_rebuild(svc, collection, exclusive=False)
                result["rebuild_job_id"] = rebuild_job["id"]
            failed = state["failed_files"]
            if failed:
                named = ", ".join(failed[:FAILED_NAMED]) + (f" and {len(failed) - FAILED_NAMED} more"
                                                             if len(failed) > FAILED_NAMED else "")
                svc.jobs.set_fields(parent_id, result=json.dumps(result))
                svc.jobs.fail(parent_id, f"{len(failed)} files failed after retries: {named}")
                outcome = "failed"
            else:
                _record_git_state(svc, raw, options.get("source", ""), collection)
                svc.jobs.succeed(parent_id, result)
                outcome = "succeeded"
    finally:
        svc.fanout.expire(parent_id, svc.settings.job_ttl_seconds)
        svc.sources.release_reconcile(options.get("source", ""), parent_id)
    svc.sources.set_last_reconcile(options.get("source", ""), {
        "job_id": parent_id, "state": outcome, "finished_at": time.time(), "walk": result["walk"],
        "git_commit": result["git_commit"], **{k: result[k] for k in RESULT_COUNTS}})
    log.info("event=reconcile.done job=%s collection=%s outcome=%s %s", parent_id, collection, outcome,
             " ".join(f"{k}={result[k]}" for k in RESULT_COUNTS))


def _record_git_state(svc: Services, raw: dict, source_id: str, collection: str) -> None:
    """Every file of a git source's reconcile is in: its next one diffs from this commit. A failed or
    canceled run records nothing, so the next diffs from the old commit again. A watcher's reconcile
    adds what it read to the files the next git reconcile rechecks."""
    state = json.loads(raw.get("git") or "null")
    if not state or not source_id:
        return
    if "read" in state:
        svc.sources.add_recheck(source_id, state["read"], MAX_RECHECK)
        return
    source = svc.sources.get(source_id)
    svc.sources.set_git_state(source_id, state["commit"], state["ignores"], state["recheck"], state.get("rules", ""))
    if source is not None and source.get("git_commit") != state["commit"]:
        save_sources(svc, collection)  # the data dir keeps the commit too (recover, snapshots)


def resume(svc: Services, parent_id: str) -> None:
    """A fanned-out parent delivered again: count children that ended without counting themselves,
    finish when none is pending, else just say the parent is alive."""
    for child in sorted(svc.fanout.pending(parent_id)):
        settle_child(svc, child)
    state = svc.fanout.state(parent_id)
    if state is None or state["remaining"] <= 0:
        finish_reconcile(svc, parent_id)
    else:
        svc.jobs.touch(parent_id)
