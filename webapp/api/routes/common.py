"""Helpers the resource blueprints (and the admin page's actions) share."""

from __future__ import annotations

from typing import NoReturn

from flask_smorest import abort

from shared.jobs.submit import request_rebuild
from shared.jobs.versions import RollbackRefused, rollback
from webapp.api.auth import hidden_collection
from webapp.api.live import Served
from webapp.api.pinned import VersionLoading, VersionNotKept
from webapp.api.runtime import swapline


def require_collection(name: str) -> None:
    if not swapline.runtime.svc.collections.exists(name):
        hidden_collection(name)  # the same answer a key limited to other collections gets


# Every search and document read names the version that answered (absent while none does).
VERSION_HEADER = "Swapline-Version"
VERSION_HEADERS = {VERSION_HEADER: {"description": "the index version that answered (absent while this process "
                                                   "serves none of the collection)", "schema": {"type": "integer"}}}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def version_headers(version: int | None) -> dict:
    return {} if version is None else {VERSION_HEADER: str(version)}


def read_version(name: str, version: int | None, from_cursor: bool = False) -> Served | None:
    """The version a read uses: the served one when `version` is None or is the served one, else that
    kept version, opened for it (webapp.api.pinned). A version that is not kept answers 404
    (`version_not_kept`), or 410 (`cursor_version_gone`) when a listing cursor named it, with the kept
    versions in `kept_versions`; one still opening after the wait answers 503 with Retry-After."""
    rt = swapline.runtime
    served = rt.live.get(name)
    if version is None or (served is not None and served.version.version == version):
        return served
    try:
        return rt.pinned.get(name, version)
    except VersionNotKept as missing:
        if from_cursor:
            abort(410, code="cursor_version_gone", kept_versions=missing.kept,
                  message=f"the listing started on {missing}; start it again without a cursor")
        abort(404, code="version_not_kept", message=str(missing), kept_versions=missing.kept)
    except VersionLoading as busy:
        abort(503, code="version_loading", message=str(busy), headers={"Retry-After": str(busy.retry_after)})


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
