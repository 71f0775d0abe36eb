"""The admin page: server-rendered HTML with a small script that follows the event stream."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, jsonify, make_response, render_template, request
from flask_smorest import abort

from shared import eventnames as names
from shared.jobs.status import overview
from shared.jobs.versions import list_versions
from shared.jobstates import EVENT_FOR_STATE
from webapp.api.auth import CSRF_HEADER, admin_session
from webapp.api.routes.common import job_location, roll_back, start_rebuild
from webapp.api.runtime import swapline

blp = Blueprint("admin", __name__, url_prefix="/admin")


@blp.after_request
def _not_framed(response):
    # No other site may frame the page (clickjacking its buttons).
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return response

ERROR_PREVIEW = 300  # characters of a job error shown; the page never dumps whole logs
# Events after which the page re-renders its live part (progress updates only move a bar).
REFRESH_ON = [*EVENT_FOR_STATE.values(), names.INDEX_PUBLISHED, names.INDEX_SWAPPED, names.GAP]


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
    response = make_response()
    token = admin_session(response)  # the page's session cookie goes on the response
    response.set_data(render_template("admin.html", refresh_on=REFRESH_ON, progress_event=names.JOB_PROGRESS,
                                      csrf_header=CSRF_HEADER, csrf_token=token, **_context()))
    return response


@blp.get("/fragment")
def fragment():
    """The live part of the page, re-rendered when a job or index event arrives."""
    return render_template("admin_fragment.html", **_context())


# The page's own actions. They live under /admin because that is where a browser's Basic credentials
# are accepted; webapp.api.auth refuses them without the page's CSRF token or from another origin.

@blp.post("/collections/<string:name>/rebuild")
def rebuild(name):
    job = start_rebuild(name)
    return jsonify(job), 202, job_location(job["id"])


@blp.post("/collections/<string:name>/rollback")
def rollback(name):
    body = request.get_json(silent=True)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        abort(422, message="the body must be {\"version\": N} with N a published version", code="invalid")
    roll_back(name, version)
    return jsonify({"versions": list_versions(swapline.runtime.svc, name)})
