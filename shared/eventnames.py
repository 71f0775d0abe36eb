"""The names the event stream and job progress use, written once. Event types are what SSE clients,
webhooks and the admin page match on; stages are what a job's `progress.stage` says it is doing. Lua
scripts receive them as arguments, never as literals of their own.

A module of constants only: the client and the CLI import it too (README code map).
"""

from __future__ import annotations

# Event types (the `type` of a stream entry, SSE's `event:` line, a webhook subscription).
JOB_QUEUED = "job.queued"
JOB_STARTED = "job.started"
JOB_PROGRESS = "job.progress"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELED = "job.canceled"
INDEX_PUBLISHED = "index.published"  # a rebuild (or rollback) moved a collection's pointer
INDEX_SWAPPED = "index.swapped"  # one API process now serves the published version
INDEX_LOAD_FAILED = "index.load_failed"  # one API process could not load it (and keeps what it serves)
GAP = "gap"  # SSE only: the stream was trimmed past where a reconnecting client stopped

# Stages of a job's progress, in the order a job goes through them.
STAGE_QUEUED = "queued"
STAGE_STARTING = "starting"
STAGE_CHUNK = "chunk"  # ingest: documents into chunks
STAGE_EMBED = "embed"  # ingest: chunks not embedded before
STAGE_WALK = "walk"  # reconcile: the tree (or the watcher's paths)
STAGE_COMPARE = "compare"  # reconcile: size/mtime, then content hash, against what the collection holds
STAGE_INGEST = "ingest"  # reconcile: files done by its child batches
STAGE_STOP_JOBS = "stop-jobs"  # drop: the collection's other jobs stop first
STAGE_REMOVE = "remove"  # drop: files and state
STAGE_MERGE = "merge"  # rebuild, compact: which rows are live
STAGE_BUILD = "build"  # rebuild: vectors added to the index
STAGE_MEASURE = "measure"  # rebuild: IVF recall against exact search
STAGE_WRITE = "write"  # a segment, a version, tombstones
STAGE_VERIFY = "verify"  # rebuild: the version read back and checked
STAGE_CANARIES = "canaries"  # rebuild: the quality gate's canary queries on the new and published versions
STAGE_EVALUATE = "evaluate"  # eval: labelled queries in each search mode
STAGE_PUBLISH = "publish"  # rebuild: the fenced pointer move
STAGE_COLLECT = "collect"  # compact: replaced segments deleted
STAGE_DONE = "done"
STAGE_CANCELED = "canceled"
