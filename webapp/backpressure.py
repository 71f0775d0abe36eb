"""Back-pressure at the HTTP edge: a full queue answers 503 with Retry-After and creates nothing."""

from __future__ import annotations

from werkzeug.exceptions import ServiceUnavailable

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


def queue_full_error(full: QueueFull) -> ServiceUnavailable:
    """The 503 for a refused submission; the Api's QueueFull handler answers it in the error shape, so
    job-creating views just let QueueFull propagate."""
    error = ServiceUnavailable()
    error.data = {"code": "queue_full", "queue": full.queue, "headers": {"Retry-After": str(RETRY_AFTER_SECONDS)},
                  "message": f"the {full.queue} queue is full ({full.depth} queued jobs, bound {full.bound}); "
                             "nothing was created, retry later"}
    return error
