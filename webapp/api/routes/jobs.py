"""Jobs: one job, the listing, cancel."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobs.submit import NotCancelable, cancel_job
from shared.jobstates import TERMINAL, JobNotFound
from shared.names import is_job_id
from webapp.api.auth import require_grant, requires, scope_filtered, visible_collections
from webapp.api.routes.common import bad_cursor
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.jobs import JobListQuerySchema, JobListSchema, JobSchema

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Ingest, delete, rebuild and drop jobs")


def load_job(job_id: str, role: str = "read") -> dict:
    """The job, or 404 when there is none or it belongs to a collection the caller's key cannot see."""
    absent = f"job {job_id!r} does not exist"
    if not is_job_id(job_id):
        abort(404, message=absent)
    try:
        job = swapline.runtime.svc.jobs.get(job_id)
    except JobNotFound:
        abort(404, message=absent)
    require_grant(job.get("collection"), role, hidden=absent)
    return job


@blp.route("")
class Jobs(MethodView):
    @scope_filtered
    @blp.arguments(JobListQuerySchema(), location="query")
    @blp.response(200, JobListSchema)
    def get(self, args):
        """Jobs, newest first, filtered by collection, state and kind; page with `cursor`.

        Finished jobs are kept for SWAPLINE_JOB_TTL_SECONDS (7 days by default), and the newest
        SWAPLINE_JOBS_KEEP_PER_COLLECTION (100) of each collection always."""
        try:
            jobs, next_cursor = swapline.runtime.svc.history.list(
                collection=args.get("collection"), state=args.get("state"), kind=args.get("kind"),
                limit=args["limit"], cursor=args.get("cursor"), collections=visible_collections())
        except ValueError:
            bad_cursor()
        return {"jobs": jobs, "next_cursor": next_cursor}


@blp.route("/<string:job_id>")
class Job(MethodView):
    @scope_filtered
    @blp.response(200, JobSchema, description="The job has finished (succeeded, failed or canceled)")
    @blp.alt_response(202, schema=JobSchema, description="The job is queued or running")
    @blp.alt_response(404, schema=ErrorSchema, description="No such job")
    def get(self, job_id):
        """A job: 202 while queued or running, 200 once it has finished."""
        job = load_job(job_id)
        return job, 200 if job["state"] in TERMINAL else 202


@blp.route("/<string:job_id>/cancel")
class Cancel(MethodView):
    @requires("admin")
    @scope_filtered
    @blp.response(202, JobSchema,
                  description="Canceled (it was queued: it will never run), or flagged (it is running: it "
                              "stops at its next step and publishes nothing)",
                  headers={"Location": {"description": "the job", "schema": {"type": "string"}}})
    @blp.alt_response(404, schema=ErrorSchema, description="No such job")
    @blp.alt_response(409, schema=ErrorSchema, description="The job has finished already, or is a drop "
                                                           "that has started")
    def post(self, job_id):
        """Cancel a job."""
        load_job(job_id, "admin")
        try:
            job = cancel_job(swapline.runtime.svc, job_id)
        except JobNotFound:
            abort(404, message=f"job {job_id!r} does not exist")
        except NotCancelable as refused:
            abort(409, code="not_cancelable", message=refused.reason, job_id=job_id)
        return job, 202, {"Location": f"/v1/jobs/{job_id}"}
