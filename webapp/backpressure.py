"""Back-pressure at the HTTP edge: a full queue answers 503 with Retry-After and creates nothing."""

from __future__ import annotations

from typing import NoReturn

from flask_smorest import abort

from shared.jobs import QueueFull
from webapp.schemas import ErrorSchema

# A client backs off this long; queues drain at the speed of the workers, so a short, fixed hint
# spreads retries without promising a time we cannot know.
RETRY_AFTER_SECONDS = 5

# For `@blp.alt_response(503, **QUEUE_FULL)` on every job-creating view.
QUEUE_FULL = {
    "schema": ErrorSchema,
    "description": "The job's queue holds its bound of queued jobs (SWAPLINE_MAX_QUEUED_INGEST / "
                   "SWAPLINE_MAX_QUEUED_INDEX); nothing was created. Retry after Retry-After seconds.",
    "headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}},
}


def abort_queue_full(full: QueueFull) -> NoReturn:
    abort(503, code="queue_full", message=f"the {full.queue} queue is full ({full.depth} queued jobs, bound "
                                          f"{full.bound}); nothing was created, retry later",
          queue=full.queue, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
