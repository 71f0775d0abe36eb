"""Reading a job's progress: how far it is, for progress bars and callbacks."""

from __future__ import annotations

from shared import eventnames as names
from shared.jobstates import RUNNING, SUCCEEDED


def job_fraction(job: dict) -> float:
    """How far a job is, 0..1, from its state and stage progress."""
    if job["state"] == SUCCEEDED:
        return 1.0
    if job["state"] != RUNNING:
        return 0.0
    progress = job.get("progress") or {}
    done, total = progress.get("done", 0), progress.get("total", 0)
    # Embedding (ingest) and building (rebuild) are where the time goes; the other stages are short.
    if progress.get("stage") in (names.STAGE_EMBED, names.STAGE_BUILD) and total:
        return 0.95 * min(done / total, 1.0)
    return 0.97 if progress.get("stage") in (names.STAGE_WRITE, names.STAGE_VERIFY, names.STAGE_PUBLISH) else 0.0
