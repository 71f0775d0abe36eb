"""Liveness and readiness."""

from __future__ import annotations

import redis
from flask.views import MethodView
from flask_smorest import Blueprint

from webapp.api import auth
from webapp.api.runtime import swapline
from webapp.api.schemas.health import HealthSchema

blp = Blueprint("health", __name__, description="Liveness and readiness probes")


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(operationId="getLiveness")
    @blp.response(200, HealthSchema)
    def get(self):
        """The process is alive."""
        return {"status": "ok", "checks": {}}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(operationId="getReadiness")
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Not ready: Redis unreachable, watcher down, a "
                                                             "published collection of which no version loads, or "
                                                             "a data layout newer than this release")
    def get(self):
        """Ready to serve: Redis answers, the index watcher runs and has synced once, and every collection
        with a published index has a version this process serves."""
        rt = swapline.runtime
        checks: dict = {}
        try:
            checks["redis"] = rt.svc.ping()
        except redis.RedisError as exc:
            checks["redis"] = False
            checks["redis_error"] = str(exc)
        # False too while the data dir or Redis is in a layout newer than this release reads.
        checks["index_watcher"] = (rt.watcher.is_alive() and rt.watcher.ready.is_set()
                                   and rt.watcher.layout_refused is None)
        checks["served_versions"] = rt.live.served()
        # Collections with a published version of which this process can serve none (all unloadable).
        checks["unservable"] = sorted(rt.watcher.unservable)
        checks["load_failures"] = {name: f.public() for name, f in rt.watcher.failures.items()}
        if rt.watcher.layout_refused:
            checks["layout"] = rt.watcher.layout_refused
        checks["auth"] = auth.mode()  # "open" when no API keys are configured
        # The query runtime and this host's embedder calibration (README "Embedding runtimes").
        checks["embedder"] = rt.svc.embedder_status()
        ok = checks["redis"] and checks["index_watcher"] and not checks["unservable"]
        if auth.principal() is None or auth.visible_collections() is not None:
            # Without a key (or with one limited to some collections) the probe answers whether, never
            # what (collection names, paths, errors).
            checks = {"redis": checks["redis"], "index_watcher": checks["index_watcher"]}
        return {"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503
