"""Helpers the resource blueprints (and the admin page's actions) share."""

from __future__ import annotations

from typing import NoReturn

from flask_smorest import abort

from shared.jobs.submit import request_rebuild
from shared.jobs.versions import RollbackRefused, rollback
from webapp.api.auth import hidden_collection
from webapp.api.runtime import swapline


def require_collection(name: str) -> None:
    if not swapline.runtime.svc.collections.exists(name):
        hidden_collection(name)  # the same answer a key limited to other collections gets


def job_location(job_id: str) -> dict:
    return {"Location": f"/v1/jobs/{job_id}"}


def start_rebuild(name: str, force: bool = False) -> dict:
    """A new rebuild of the collection (its job; `force`: published whatever the quality gate says). One
    already queued or running raises JobInProgress, which the API answers with 409 naming it."""
    require_collection(name)
    job, _ = request_rebuild(swapline.runtime.svc, name, exclusive=True, bounded=True, force=force)
    return job


def roll_back(name: str, version: int) -> None:
    """Publish an older kept version again; 404/409 when that cannot be."""
    require_collection(name)
    try:
        rollback(swapline.runtime.svc, name, version)
    except RollbackRefused as refused:
        abort(refused.status, code=refused.code, message=refused.message)


def bad_cursor() -> NoReturn:
    """The 422 for a `cursor` that is not one a previous page gave."""
    abort(422, message="cursor is not valid; pass next_cursor of a previous page",
          errors={"cursor": ["not a valid cursor"]})
