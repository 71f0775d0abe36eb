"""What a collection looks like right now: counts, served index, drift, running job, lock, replicas."""

from __future__ import annotations

import bisect
import json
import time

from shared import cursors
from shared.jobkinds import REBUILD
from shared.jobs.versions import list_versions
from shared.jobstates import FAILED, RUNNING, SUCCEEDED, iso_time, public
from shared.search.engine import DEFAULT_MODE
from shared.services import Services


def running_job(svc: Services, name: str) -> dict | None:
    """The rebuild holding the lease, else the newest running job of the collection, with its ETA."""
    holder = svc.locks.holder(name)
    candidates = [holder["job_id"]] if holder else []
    candidates += svc.history.newest_ids(name, 20)
    for raw in svc.jobs.raw_many(candidates):
        if raw.get("state") != RUNNING:
            continue
        job = public(raw)
        done, total = job["progress"]["done"], job["progress"]["total"]
        rate = float(raw.get("rate") or 0)
        job["progress"]["rate"] = rate or None
        if rate <= 0 and done > 0 and raw.get("started_at"):
            # No rate reported (a fanned-out reconcile sums its children): the pace since the start.
            elapsed = time.time() - float(raw["started_at"])
            rate = done / elapsed if elapsed > 0 else 0.0
        job["progress"]["eta_seconds"] = round((total - done) / rate, 1) if rate > 0 and total >= done else None
        return job
    return None


def collection_status(svc: Services, name: str) -> dict:
    info = svc.collections.info(name)
    pointer = svc.pointers.get(name)
    index = None
    drift = info["documents"] if pointer is None else None
    if pointer:
        index = {key: pointer.get(key) for key in ("version", "vectors", "kind", "model", "dim", "built_at")}
        index["by_type"] = json.loads(pointer.get("by_type") or "{}")
        drift = max(0, info["changes"] - pointer.get("changes", 0))
    lock = svc.locks.holder(name)
    if lock:
        lock["since"] = iso_time(svc.jobs.field(lock["job_id"], "started_at"))
    replicas = svc.replicas.versions()
    served = {rid: versions.get(name) for rid, versions in replicas.items()}
    load_failures = [{"replica": rid, **failed[name]} for rid, failed in sorted(svc.replicas.failures().items())
                     if name in failed]
    return {
        "name": name,
        "documents": info["documents"],
        "chunks": info["chunks"],
        "index": index,
        "last_rebuild_at": info["last_rebuild_at"],
        "documents_at_rebuild": pointer.get("documents") if pointer else None,
        "drift": drift,
        "running_job": running_job(svc, name),
        "pending_rebuild": svc.locks.pending(name),
        "lock": lock,
        "replicas": served,
        "load_failures": load_failures,
        "converged": pointer is not None and bool(served) and all(v == pointer["version"] for v in served.values()),
        "default_mode": info["default_mode"] or DEFAULT_MODE,
        "quality": quality_view(svc.quality.last_evaluation(name)),
    }


def quality_view(report: dict | None) -> dict | None:
    """The last quality-gate evaluation as the status shows it (`at` in ISO 8601)."""
    if not report:
        return None
    return {**report, "at": iso_time(report.get("at"))}


def list_collections(svc: Services, after: str | None, limit: int, served: dict[str, int],
                     visible: frozenset[str] | None = None) -> tuple[list[dict], str | None]:
    """A page of collections by name, after the name `after`: counts, the published index, and the
    version `served` (this process's name -> version) has; only those in `visible` unless it is None.
    Returns (page, next cursor or None)."""
    names = svc.collections.names()
    if visible is not None:
        names = [name for name in names if name in visible]
    start = bisect.bisect_right(names, after) if after is not None else 0
    page = names[start:start + limit]
    pointers = svc.pointers.get_many(page)
    items = []
    for name in page:
        info = svc.collections.info(name)
        pointer = pointers.get(name)
        index = None
        if pointer:
            index = {key: pointer.get(key) for key in ("version", "vectors", "kind", "model", "dim")}
            index["built_at"] = iso_time(pointer.get("built_at"))
        items.append({"name": name, "documents": info["documents"], "chunks": info["chunks"], "index": index,
                      "served_version": served.get(name)})
    more = start + limit < len(names)
    return items, cursors.encode(page[-1]) if more and page else None


def badge(status: dict, last_rebuild: dict | None) -> str:
    """idle / rebuilding / succeeded / failed, for the admin page."""
    if status["lock"] or (status["running_job"] and status["running_job"]["kind"] == REBUILD.name) \
            or status["pending_rebuild"]:
        return "rebuilding"
    if last_rebuild and last_rebuild["state"] in (SUCCEEDED, FAILED):
        return last_rebuild["state"]
    return "idle"


def overview(svc: Services) -> dict:
    """Everything the admin page shows, in one read."""
    collections = []
    for name in svc.collections.names():
        status = collection_status(svc, name)
        last_rebuild = svc.history.last_of_kind(name, REBUILD.name)
        collections.append({**status, "badge": badge(status, last_rebuild), "last_rebuild_job": last_rebuild,
                            "versions": list_versions(svc, name)})
    return {"collections": collections, "jobs": svc.history.recent(), "replicas": svc.replicas.versions()}
