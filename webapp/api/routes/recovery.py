"""Disaster recovery: Redis state rebuilt from the data dir."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from shared.jobkinds import RECOVER
from shared.jobs.submit import check_capacity, create_and_enqueue
from webapp.api.auth import requires
from webapp.api.errors import QUEUE_FULL
from webapp.api.idempotency import idempotent
from webapp.api.routes.common import job_location
from webapp.api.runtime import swapline
from webapp.api.schemas.jobs import JobSchema

blp = Blueprint("recovery", __name__, url_prefix="/v1/admin", description="Disaster recovery")

LOCATION = {"Location": {"description": "/v1/jobs/{id} of the job", "schema": {"type": "string"}}}


@blp.route("/recover")
class Recover(MethodView):
    @requires("admin")
    @idempotent
    @blp.response(202, JobSchema, headers=LOCATION, description="The `recover` job (of no collection). Its "
                  "result counts the collections recovered and skipped, versions, segments, documents, and "
                  "`embedded`: 0")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self):
        """Register every collection the data dir holds that Redis does not know (after Redis lost its
        data): documents, segments, the newest version that passes its checks and the older ones,
        fences, sources. Collections Redis knows are left alone; nothing is embedded again."""
        svc = swapline.runtime.svc
        check_capacity(svc, RECOVER.name)
        job = create_and_enqueue(svc, RECOVER.name, "", {}, bounded=True)
        return job, 202, job_location(job["id"])
