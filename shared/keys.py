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


def running() -> str:
    """Set of the ids of jobs the transition script moved to running. The publish script finishes a
    rebuild without touching it, so the sweeper prunes ids whose job is no longer running."""
    return _k("running")


def sweep_lock() -> str:
    """Held (with a TTL) by the one sweep running now, so concurrent beats do not sweep twice."""
    return _k("sweep", "lock")


# Counters Prometheus reads (monotonic, never reset by Swapline)
def embedded_chunks() -> str:
    """Hash collection -> chunks embedded by ingest jobs so far (swapline_chunks_embedded_total)."""
    return _k("counters", "embedded_chunks")


def embed_seconds() -> str:
    """Hash collection -> seconds ingest jobs spent embedding (swapline_embed_seconds_total)."""
    return _k("counters", "embed_seconds")


def recover_lock() -> str:
    """Held (with a TTL) by the one recovery check running now: every worker runs it, one at a time."""
    return _k("recover", "lock")


def collect_lock() -> str:
    """Held (with a TTL) by the one version collection running now."""
    return _k("collect", "lock")


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


def readers(name: str) -> str:
    """Sorted set "{version}|{replica_id}" -> expiry (epoch seconds): the reader leases API processes
    hold on the versions of a collection they serve (version collection never deletes a leased one)."""
    return _k("col", name, "readers")


def idempotency(route: str, key: str) -> str:
    """JSON record of the first request made with an Idempotency-Key on a route: pending, then its
    response; expires after `idempotency_ttl_seconds`."""
    return _k("idem", route, key)


# Webhooks
def webhooks() -> str:
    """Set of webhook ids."""
    return _k("webhooks")


def webhook(webhook_id: str) -> str:
    """Hash: id, url, events (JSON list), collection, secret, created_at."""
    return _k("webhook", webhook_id)


def webhook_deliveries(webhook_id: str) -> str:
    """List of the webhook's delivery ids, newest first, trimmed to the newest few."""
    return _k("webhook", webhook_id, "deliveries")


def delivery(delivery_id: str) -> str:
    """Hash: one delivery of one event to one webhook, its state and attempts; expires."""
    return _k("delivery", delivery_id)


def webhook_cursor() -> str:
    """The id of the last event the webhook dispatcher has fanned out into deliveries."""
    return _k("webhooks", "cursor")


def webhook_dispatch_lock() -> str:
    """Held (with a TTL) by the one dispatcher running now."""
    return _k("webhooks", "dispatch_lock")


def dropping(name: str) -> str:
    """Set while a drop of the collection runs (value: the drop job id), so it is not re-created
    half-way through."""
    return _k("col", name, "dropping")


# Sources (folders a collection follows) and fan-out
def sources() -> str:
    """Hash source_id -> collection, for every source (the watcher lists them)."""
    return _k("sources")


def collection_sources(name: str) -> str:
    """Set of the ids of a collection's sources."""
    return _k("col", name, "sources")


def source(source_id: str) -> str:
    """Hash: id, collection, path, include, exclude, prefix, watch, created_at, last_reconcile (JSON),
    git_commit and git_ignores (a git source's last indexed commit, its uncommitted .gitignore files)."""
    return _k("source", source_id)


def source_recheck(source_id: str) -> str:
    """Set of the relative paths a git source's next reconcile compares besides what git names: files
    that were uncommitted, untracked, symlinked or just read when its commit was recorded."""
    return _k("source", source_id, "recheck")


def source_files(source_id: str) -> str:
    """Hash relative path -> "size:mtime_ns:content hash" of each file the collection holds from the source."""
    return _k("source", source_id, "files")


def source_reconcile(source_id: str) -> str:
    """The id of the source's one queued or running reconcile."""
    return _k("source", source_id, "reconcile")


def watch_lease(source_id: str) -> str:
    """Held (with a TTL the holder renews) by the one watcher process following the source."""
    return _k("source", source_id, "watch")


def fanout(parent_id: str) -> str:
    """Hash: the barrier of a job that fanned out children (total, remaining, sums of their counts)."""
    return _k("job", parent_id, "fanout")


def fanout_pending(parent_id: str) -> str:
    """Set of the children of a fanned-out job that have not finished yet."""
    return _k("job", parent_id, "pending")


def fanout_failed(parent_id: str) -> str:
    """List of the files whose child batch failed for good."""
    return _k("job", parent_id, "failed")


def compact_pending(name: str) -> str:
    """The id of the one queued or running compaction of a collection."""
    return _k("col", name, "compact_pending")


def canaries(name: str) -> str:
    """JSON: the collection's canary queries and `max_drop`, checked before a rebuild publishes."""
    return _k("col", name, "canaries")


def quality(name: str) -> str:
    """JSON: the last quality-gate evaluation of a rebuild of the collection (shown in its status)."""
    return _k("col", name, "quality")


def layout() -> str:
    """The layout Swapline's Redis state is written in (an integer; shared/jobs/upgrade.py)."""
    return _k("layout")


def upgrade_lock() -> str:
    """Held by the one process running migrations."""
    return _k("upgrade_lock")


def replication_probe() -> str:
    """A counter written only so a WAIT has a write of its own connection to wait for
    (`shared.store.conn.confirm`)."""
    return _k("replication_probe")


def collection_keys(name: str) -> list[str]:
    """The keys a drop deletes. The fence counter stays: fences keep rising across a drop and a
    re-create, so a stale builder of the old collection can never publish over the new one."""
    return [collection(name), collection_docs(name), segments(name), segment_seq(name), rebuild_pending(name),
            pointer(name), pointer_history(name), collection_sources(name), compact_pending(name), readers(name),
            canaries(name), quality(name)]


# Celery's broker (kombu's Redis transport). These keys belong to kombu, not to Swapline, and carry no
# prefix; the sweeper only reads them, and removes an unacked entry before re-sending its job.
BROKER_PRIORITY_SEP = "\x06\x16"
BROKER_PRIORITY_STEPS = (0, 3, 6, 9)


def broker_queue_lists(queue: str) -> list[str]:
    """The lists kombu keeps one Celery queue's messages in (one per priority step)."""
    return [queue if pri == 0 else f"{queue}{BROKER_PRIORITY_SEP}{pri}" for pri in BROKER_PRIORITY_STEPS]


def broker_unacked() -> str:
    """Hash delivery_tag -> [message, exchange, routing_key] of messages delivered but not acked."""
    return "unacked"


def broker_unacked_index() -> str:
    """Sorted set delivery_tag -> delivery time of the unacked messages."""
    return "unacked_index"


def celery_queue(queue: str) -> str:
    """The broker list holding a Celery queue's messages (kombu's Redis transport names it after the
    queue, outside our prefix); read only, for queue-depth metrics."""
    return queue
