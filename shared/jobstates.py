"""The job state machine and a job's public form: the facts every part of Swapline shares.

States: queued -> running -> succeeded | failed | canceled, and queued -> canceled. `JobStore`
(shared.store.jobs) makes each transition once; this module only says what the states are.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from shared import eventnames as names

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
TRANSITIONS = {
    QUEUED: frozenset({RUNNING, CANCELED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELED}),
}
EVENT_FOR_STATE = {
    QUEUED: names.JOB_QUEUED,
    RUNNING: names.JOB_STARTED,
    SUCCEEDED: names.JOB_SUCCEEDED,
    FAILED: names.JOB_FAILED,
    CANCELED: names.JOB_CANCELED,
}


class JobNotFound(LookupError):
    pass


class QueueFull(Exception):
    """A queue holds `bound` queued jobs already: back-pressure, nothing was created."""

    def __init__(self, queue: str, depth: int, bound: int):
        super().__init__(f"queue {queue!r} holds {depth} queued jobs (bound {bound})")
        self.queue, self.depth, self.bound = queue, depth, bound


def new_job_id() -> str:
    return uuid.uuid4().hex


def allowed_from(state: str) -> list[str]:
    return [src for src, targets in TRANSITIONS.items() if state in targets]


def iso_time(ts: str | float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat().replace("+00:00", "Z")


def _progress(data: dict) -> dict:
    progress = {"stage": data.get("stage", ""), "done": int(float(data.get("done") or 0)),
                "total": int(float(data.get("total") or 0))}
    if data.get("counts"):  # a job that fanned out: the sums of its children's counts
        progress["counts"] = json.loads(data["counts"])
    return progress


def public(data: dict) -> dict:
    """A job hash as the API shows it."""
    return {
        "id": data["id"],
        "kind": data["kind"],
        "collection": data["collection"],
        "state": data["state"],
        "progress": _progress(data),
        "error": data.get("error") or None,
        "created_at": iso_time(data.get("created_at")),
        "started_at": iso_time(data.get("started_at")),
        "finished_at": iso_time(data.get("finished_at")),
        "result": json.loads(data["result"]) if data.get("result") else None,
        "cancel_requested": data.get("cancel_requested") == "1",
        "attempts": int(data.get("executions") or 0),
        "retryable": data.get("retryable") == "1",
    }
