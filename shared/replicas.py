"""Which index version each live API process serves, from the heartbeats their watchers write."""

from __future__ import annotations

import time

from shared import keys
from shared.services import Services


def replica_versions(svc: Services) -> dict[str, dict[str, int]]:
    """replica id -> {collection: version served}, for API processes whose heartbeat is fresh."""
    cutoff = time.time() - svc.settings.replica_ttl_seconds
    ids = svc.redis.zrangebyscore(keys.replicas(), cutoff, "+inf")
    pipe = svc.redis.pipeline(transaction=False)
    for replica_id in ids:
        pipe.hgetall(keys.replica(replica_id))
    out = {}
    for replica_id, served in zip(ids, pipe.execute(), strict=True):
        if served:
            out[replica_id] = {name: int(v) for name, v in served.items() if not name.startswith("_")}
    return out
