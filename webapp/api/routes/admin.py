"""The admin page: server-rendered HTML with a small script that follows the event stream."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, render_template

from shared.jobs.model import EVENT_FOR_STATE
from shared.status import overview
from webapp.api.runtime import swapline

blp = Blueprint("admin", __name__, url_prefix="/admin")

ERROR_PREVIEW = 300  # characters of a job error shown; the page never dumps whole logs
# Events after which the page re-renders its live part (progress updates only move a bar).
REFRESH_ON = [*EVENT_FOR_STATE.values(), "index.published", "index.swapped", "gap"]


def _when(ts) -> str:
    if not ts:
        return "never"
    if isinstance(ts, str):
        return ts.replace("T", " ")[:19]
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _context() -> dict:
    data = overview(swapline.runtime.svc)
    for job in data["jobs"]:
        if job["error"] and len(job["error"]) > ERROR_PREVIEW:
            job["error"] = job["error"][:ERROR_PREVIEW] + "…"
    return {**data, "when": _when}


@blp.get("")
def page():
    return render_template("admin.html", refresh_on=REFRESH_ON, **_context())


@blp.get("/fragment")
def fragment():
    """The live part of the page, re-rendered when a job or index event arrives."""
    return render_template("admin_fragment.html", **_context())
