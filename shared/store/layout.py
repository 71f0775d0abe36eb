"""The layout Swapline's Redis state is written in: one integer, raised by forward-only migrations
(`shared.jobs.upgrade`)."""

from __future__ import annotations

import redis

from shared import keys


class LayoutStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    def get(self) -> int | None:
        """The recorded layout; None when none is recorded."""
        raw = self.r.get(keys.layout())
        return int(raw) if raw is not None else None

    def set(self, layout: int) -> None:
        self.r.set(keys.layout(), int(layout))

    def holds_state(self) -> bool:
        """Whether this Redis holds Swapline state at all (any key under the prefix): an empty one has
        nothing to migrate."""
        return next(self.r.scan_iter(f"{keys.PREFIX}*", count=1000), None) is not None
