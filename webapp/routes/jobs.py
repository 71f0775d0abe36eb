"""Jobs."""

from __future__ import annotations

import re

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobs import JOB_ID_PATTERN, TERMINAL, JobNotFound
from webapp.extensions import swapline
from webapp.schemas import ErrorSchema, JobSchema

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Ingest and rebuild jobs")


def load_job(job_id: str) -> dict:
    if not re.match(JOB_ID_PATTERN, job_id):
        abort(404, message=f"job {job_id!r} does not exist")
    try:
        return swapline.runtime.svc.jobs.get(job_id)
    except JobNotFound:
        abort(404, message=f"job {job_id!r} does not exist")


@blp.route("/<string:job_id>")
class Job(MethodView):
    @blp.response(200, JobSchema, description="The job has finished (succeeded, failed or canceled)")
    @blp.alt_response(202, schema=JobSchema, description="The job is queued or running")
    @blp.alt_response(404, schema=ErrorSchema, description="No such job")
    def get(self, job_id):
        """A job: 202 while queued or running, 200 once it has finished."""
        job = load_job(job_id)
        return job, 200 if job["state"] in TERMINAL else 202
