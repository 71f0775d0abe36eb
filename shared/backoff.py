"""Doubling pauses after consecutive failures, written once: the threads that follow Redis (index watcher,
event hub, housekeeping), version loads that failed, webhook and source-batch retries all use it.

(The Redis clients' own command retries are redis-py's `Retry` with its jittered backoff, and the
Python client's HTTP retries are urllib3's `Retry`: configured where the connection is made.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def doubling(first: float, attempt: int, cap: float = math.inf) -> float:
    """The pause after failure number `attempt` (1 for the first): first, 2 * first, 4 * first, ...,
    never more than `cap`."""
    return min(cap, first * 2 ** max(0, attempt - 1))


@dataclass
class Backoff:
    """Consecutive failures of one loop and the pause each calls for.

    `failed()` counts one and returns the pause; `succeeded()` starts over and says how many failures it
    ends (0: nothing to report). `worth_logging` is true on the first failure and once the pauses stop
    growing, so an outage of an hour logs a line every `cap` seconds, not every retry."""

    first: float
    cap: float
    failures: int = 0

    def failed(self) -> float:
        self.failures += 1
        return self.pause

    def succeeded(self) -> int:
        ended, self.failures = self.failures, 0
        return ended

    @property
    def pause(self) -> float:
        return doubling(self.first, self.failures, self.cap)

    @property
    def worth_logging(self) -> bool:
        return self.failures == 1 or self.pause >= self.cap
