"""Housekeeping on a clock of its own: the recovery check, the sweep, version collection and the webhook
dispatcher, run by
every worker's housekeeping thread (`workers/housekeeping.py`) rather than as tasks on a queue, so a
long rebuild on the `index` queue never delays them, and beat is not needed. Locks in Redis make many
workers doing the same harmless: each piece runs on one worker at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from shared.backoff import Backoff
from shared.jobs import upgrade
from shared.jobs.sweep import recover, sweep
from shared.jobs.versions import collect_versions
from shared.services import Services
from shared.webhooks.delivery import dispatch

log = logging.getLogger(__name__)

# Backoff after a failed round (Redis down): doubles from the first value up to the last.
ERROR_BACKOFF = (1.0, 30.0)


def collect_all(svc: Services) -> dict | None:
    """Collect unserved old versions of every collection; None while another worker does it."""
    token = svc.collect_lock.acquire(max(60, int(svc.settings.collect_versions_seconds)))
    if token is None:
        return None
    try:
        return {name: collect_versions(svc, name) for name in svc.collections.names()}
    finally:
        svc.collect_lock.release(token)


class Housekeeper:
    """What is due when: `run_due()` runs every piece whose interval has passed and says how long to
    sleep before the next one is due."""

    def __init__(self, svc: Services, send_delivery: Callable[[str], None] | None = None):
        self.svc = svc
        s = svc.settings
        self.pieces: list[tuple[str, float, Callable[[Services], object]]] = [
            # Once per process (again only after a failure): refuse a newer layout, migrate an older one.
            ("layout", float("inf"), upgrade.check),
            ("recover", s.keepalive_seconds, recover),
            ("sweep", s.sweep_interval, sweep),
            ("collect_versions", s.collect_versions_seconds, collect_all),
        ]
        if send_delivery is not None:
            self.pieces.append(("webhooks", s.webhook_dispatch_seconds, lambda svc: dispatch(svc, send_delivery)))
        now = time.monotonic()
        self.next_at = {name: now for name, _, _ in self.pieces}
        self.backoff = Backoff(*ERROR_BACKOFF)

    def run_due(self) -> float:
        now = time.monotonic()
        for name, interval, piece in self.pieces:
            if now < self.next_at[name]:
                continue
            try:
                result = piece(self.svc)
            except redis.RedisError as exc:
                delay = self.backoff.failed()
                log.warning("event=housekeeping.redis_error piece=%s error=%r retry_in=%.1f", name, str(exc), delay)
                return delay
            except upgrade.LayoutTooNew as exc:
                log.error("event=housekeeping.layout_too_new error=%r", str(exc))
                return ERROR_BACKOFF[1]
            self.backoff.succeeded()
            self.next_at[name] = time.monotonic() + interval
            if name == "recover" and result:
                log.info("event=housekeeping.recovered jobs=%s", result)
        return max(0.05, min(self.next_at.values()) - time.monotonic())


class HousekeepingThread(threading.Thread):
    def __init__(self, services: Callable[[], Services], send_delivery: Callable[[str], None] | None = None):
        super().__init__(name="swapline-housekeeping", daemon=True)
        self._services = services
        self._send_delivery = send_delivery
        self._stopping = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.join(timeout)

    def run(self) -> None:
        keeper = Housekeeper(self._services(), self._send_delivery)
        while not self._stopping.is_set():
            try:
                wait = keeper.run_due()
            except Exception:  # a bug in one round must not end housekeeping for the worker's lifetime
                log.exception("event=housekeeping.error")
                wait = ERROR_BACKOFF[1]
            self._stopping.wait(wait)
