"""A collection's quality gate in Redis: its canary queries (with `max_drop`) and the last evaluation a
rebuild made of them. Both are small JSON values under the collection's keys; a drop removes them."""

from __future__ import annotations

import json
from typing import cast

import redis

from shared import keys
from shared.store.conn import confirm


def _loads(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class QualityStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    def canaries(self, name: str) -> dict | None:
        """{"canaries": [...], "max_drop": n, "updated_at": t}, or None when the collection has none."""
        return _loads(cast(str | None, self.r.get(keys.canaries(name))))

    def set_canaries(self, name: str, config: dict) -> None:
        self.r.set(keys.canaries(name), json.dumps(config))
        confirm(self.r)

    def clear_canaries(self, name: str) -> bool:
        """False when there were none. The last evaluation goes with them."""
        removed = self.r.delete(keys.canaries(name), keys.quality(name))
        confirm(self.r)
        return bool(removed)

    def last_evaluation(self, name: str) -> dict | None:
        return _loads(cast(str | None, self.r.get(keys.quality(name))))

    def record_evaluation(self, name: str, report: dict) -> None:
        self.r.set(keys.quality(name), json.dumps(report))
