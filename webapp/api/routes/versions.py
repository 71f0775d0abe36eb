"""Index versions of a collection and rollback."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from shared.jobs.versions import list_versions
from webapp.api.auth import requires
from webapp.api.routes.common import require_collection, roll_back
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.versions import RollbackSchema, VersionListSchema

blp = Blueprint("versions", __name__, url_prefix="/v1/collections", description="Index versions and rollback")


@blp.route("/<string:name>/versions")
class Versions(MethodView):
    @blp.response(200, VersionListSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    def get(self, name):
        """The last K published versions (newest first), which is current, which are still on disk,
        and how many API processes serve each."""
        require_collection(name)
        return {"versions": list_versions(swapline.runtime.svc, name)}


@blp.route("/<string:name>/rollback")
class Rollback(MethodView):
    @requires("admin")
    @blp.arguments(RollbackSchema())
    @blp.response(200, VersionListSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection or version")
    @blp.alt_response(409, schema=ErrorSchema, description="Already current, deleted, or a rebuild holds the lock")
    def post(self, body, name):
        """Publish an older kept version again (fenced like any publish); every API process swaps back."""
        roll_back(name, body["version"])
        return {"versions": list_versions(swapline.runtime.svc, name)}
