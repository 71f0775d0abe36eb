"""Every Redis key and channel Swapline uses, built here and nowhere else.

Lua scripts receive their keys from these builders through KEYS; no other module formats a key.
"""

from __future__ import annotations

PREFIX = "swapline:"


def _k(*parts: str) -> str:
    return PREFIX + ":".join(parts)


# Collections
def collections() -> str:
    """Set of collection names."""
    return _k("collections")


def collection(name: str) -> str:
    """Hash: created_at, documents, chunks, last_rebuild_at, documents_at_rebuild, changed_since_rebuild."""
    return _k("col", name)


def collection_docs(name: str) -> str:
    """Hash doc_id -> "seq:chunks": the segment holding the live version of each document."""
    return _k("col", name, "docs")


def segments(name: str) -> str:
    """List of registered segment sequence numbers, oldest first."""
    return _k("col", name, "segments")


def segment_seq(name: str) -> str:
    return _k("col", name, "segseq")


def lock(name: str) -> str:
    """Rebuild lease lock: value "job_id|fence", with a TTL renewed while the build runs."""
    return _k("col", name, "lock")


def fence(name: str) -> str:
    """Monotonic fencing counter, incremented on each lock acquisition."""
    return _k("col", name, "fence")


def rebuild_pending(name: str) -> str:
    """The id of the one queued rebuild of a collection, if any."""
    return _k("col", name, "rebuild_pending")


def pointer(name: str) -> str:
    """Hash: the published index version (version, path, vectors, model, dim, kind, built_at, ...)."""
    return _k("col", name, "pointer")


def pointer_history(name: str) -> str:
    """List of JSON pointer records, newest first."""
    return _k("col", name, "history")


def collection_jobs(name: str) -> str:
    """Sorted set job_id -> created_at, for listing a collection's jobs."""
    return _k("col", name, "jobs")


# Jobs
def job(job_id: str) -> str:
    return _k("job", job_id)


def jobs() -> str:
    """Sorted set job_id -> created_at of all jobs."""
    return _k("jobs")


def queued(queue: str) -> str:
    """Set of the ids of jobs in state queued on one Celery queue (depth and back-pressure)."""
    return _k("queued", queue)


# Events, swaps and replicas
def events() -> str:
    """Stream of job and index events; entry ids are the SSE event ids."""
    return _k("events")


def swap_channel() -> str:
    """Pub/sub channel announcing a newly published pointer."""
    return _k("swaps")


def replicas() -> str:
    """Sorted set replica_id -> last heartbeat (epoch seconds)."""
    return _k("replicas")


def replica(replica_id: str) -> str:
    """Hash collection -> version served by one API process; expires unless refreshed."""
    return _k("replica", replica_id)


def idempotency(route: str, key: str) -> str:
    return _k("idem", route, key)
