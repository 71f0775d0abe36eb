"""One record per job kind: everything submission, the sweep, status, the tasks, the Celery routes and
the API's error mapping need to know about a kind, in one place.

Adding a kind takes: a `JobKind` here, the work function in `shared/jobs/` (or `shared/sources/`),
one task line in `workers/tasks.py` (`job_task(KIND, work)`; a kind whose retries need more, like
`ingest_files`, writes its own task around the same runner), and nothing else: the route is derived
from `queue`, the sweep reads `holds_lease`, cancel reads `cancel_while_running` and `leftovers`, the
task reads `retry_when_busy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import tasknames
from shared.tasknames import QUEUE_INDEX, QUEUE_INGEST

# What a job canceled while still queued may leave behind; `shared.jobs.submit.cleanup_canceled` knows
# how to remove each (the worker that later receives the message skips the job, and would too).
PENDING_REBUILD = "pending_rebuild"  # the collection's one-queued-rebuild slot names the job
STAGED_BATCH = "staged_batch"  # the submitted documents under staging/
DROP_MARKER = "drop_marker"  # the collection's "being dropped by" marker
UPLOADED_ARCHIVE = "uploaded_archive"  # a snapshot archive uploaded for a restore, under staging/


@dataclass(frozen=True)
class JobKind:
    name: str
    task: str  # the Celery task's name (the web side enqueues by name)
    queue: str
    # Runs under the collection's rebuild lease: while the lease lives the run is alive, whatever its
    # heartbeat says (the sweep leaves it alone).
    holds_lease: bool = False
    # A running job may be flagged to stop at its next step; False: once started it runs to its end.
    cancel_while_running: bool = True
    # The work raised LockBusy (another job holds what it needs): the task retries after
    # SWAPLINE_REBUILD_RETRY_SECONDS instead of failing, and the job keeps its state.
    retry_when_busy: bool = False
    leftovers: tuple[str, ...] = ()
    # Said by the API's 409 when a job of this kind excludes a second one (JobInProgress).
    busy_message: str = "a job of this kind is already queued or running"


INGEST = JobKind("ingest", tasknames.INGEST, QUEUE_INGEST, leftovers=(STAGED_BATCH,))
DELETE = JobKind("delete", tasknames.DELETE_DOCUMENTS, QUEUE_INGEST)
REBUILD = JobKind("rebuild", tasknames.REBUILD, QUEUE_INDEX, holds_lease=True, retry_when_busy=True,
                  leftovers=(PENDING_REBUILD,),
                  busy_message="a rebuild of this collection is already queued or running")
DROP = JobKind("drop", tasknames.DROP_COLLECTION, QUEUE_INDEX, holds_lease=True, cancel_while_running=False,
               retry_when_busy=True, leftovers=(DROP_MARKER,),
               busy_message="a drop of this collection is already queued or running")
# Walks a source, fans changed files out as ingest_files jobs, tombstones removed files (or removes a
# source: that waits, retried, for the source's running reconcile to stop).
RECONCILE = JobKind("reconcile", tasknames.RECONCILE, QUEUE_INGEST, retry_when_busy=True,
                    busy_message="a reconcile of this source is already queued or running")
# One batch of a reconcile's changed files: read, chunk, embed, one segment (retried on its own).
INGEST_FILES = JobKind("ingest_files", tasknames.INGEST_FILES, QUEUE_INGEST)
# Merges a collection's segments; waits out a rebuild before deleting the old ones.
COMPACT = JobKind("compact", tasknames.COMPACT, QUEUE_INDEX, retry_when_busy=True)

# Registers the collections the data dir holds and Redis does not know (`shared.jobs.fromdisk`); its
# job belongs to no collection (""). Not the liveness check that re-sends lost jobs.
RECOVER = JobKind("recover", tasknames.RECOVER, QUEUE_INDEX, cancel_while_running=False,
                  busy_message="a recover is already queued or running")
# Writes one archive of a collection's served version and segments; holds the lease so that no
# rebuild publishes, collects versions or lets a compaction delete segments while it reads them.
SNAPSHOT = JobKind("snapshot", tasknames.SNAPSHOT, QUEUE_INDEX, holds_lease=True, retry_when_busy=True,
                   busy_message="a snapshot of this collection is already queued or running")
# Checks an archive, moves its folders in as a new collection and registers it; runs to its end.
RESTORE = JobKind("restore", tasknames.RESTORE, QUEUE_INDEX, cancel_while_running=False,
                  leftovers=(UPLOADED_ARCHIVE,))

# Searches labelled queries on the published version in every mode and scores them (read only).
EVAL = JobKind("eval", tasknames.EVAL, QUEUE_INGEST, leftovers=(STAGED_BATCH,))

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (INGEST, DELETE, REBUILD, DROP, RECONCILE, INGEST_FILES,
                                                          COMPACT, RECOVER, SNAPSHOT, RESTORE, EVAL)}
