"""Helpers the resource blueprints share."""

from __future__ import annotations

from flask_smorest import abort

from webapp.api.runtime import swapline


def require_collection(name: str) -> None:
    if not swapline.runtime.svc.collections.exists(name):
        abort(404, message=f"collection {name!r} does not exist")


def job_location(job_id: str) -> dict:
    return {"Location": f"/v1/jobs/{job_id}"}
