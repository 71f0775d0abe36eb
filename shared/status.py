"""What a collection looks like right now: counts, served index, drift, running job, lock, replicas."""

from __future__ import annotations

import json
import time

from shared import keys
from shared.jobs import RUNNING, iso_time
from shared.services import Services


def replica_versions(svc: Services) -> dict[str, dict[str, int]]:
    """replica id -> {collection: version served}, for API processes whose heartbeat is fresh."""
    cutoff = time.time() - svc.settings.replica_ttl_seconds
    ids = svc.redis.zrangebyscore(keys.replicas(), cutoff, "+inf")
    pipe = svc.redis.pipeline(transaction=False)
    for replica_id in ids:
        pipe.hgetall(keys.replica(replica_id))
    out = {}
    for replica_id, served in zip(ids, pipe.execute(), strict=True):
        if served:
            out[replica_id] = {name: int(v) for name, v in served.items() if not name.startswith("_")}
    return out


def running_job(svc: Services, name: str) -> dict | None:
    """The rebuild holding the lease, else the newest running job of the collection, with its ETA."""
    holder = svc.locks.holder(name)
    candidates = [holder["job_id"]] if holder else []
    candidates += svc.redis.zrevrange(keys.collection_jobs(name), 0, 19)
    for job_id in candidates:
        raw = svc.redis.hgetall(keys.job(job_id))
        if raw.get("state") != RUNNING:
            continue
        job = svc.jobs.public(raw)
        done, total = job["progress"]["done"], job["progress"]["total"]
        rate = float(raw.get("rate") or 0)
        job["progress"]["rate"] = rate or None
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
        lock["since"] = iso_time(svc.redis.hget(keys.job(lock["job_id"]), "started_at"))
    replicas = replica_versions(svc)
    served = {rid: versions.get(name) for rid, versions in replicas.items()}
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
        "converged": bool(pointer) and bool(served) and all(v == pointer["version"] for v in served.values()),
    }
