"""A worker's proof of life: one keepalive thread per worker process refreshes the heartbeat of the
job it works on and renews every lease it holds, every `keepalive_seconds` (a quarter of the lease).

Heartbeats and leases no longer depend on the work reaching a step boundary: a live worker inside one
long call (training an IVF index, writing a large version, embedding a big batch) is never taken for
dead, while a worker that is killed, crashes or is paused stops renewing both, so the recovery check
(`shared.jobs.sweep.recover`) sends its job again once the lease has run out.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import redis

from shared.services import Services

log = logging.getLogger(__name__)

# After a failed refresh (Redis restarting, say) the thread tries again this soon, so heartbeats resume
# right after an outage instead of a whole interval later.
RETRY_SECONDS = 1.0


class Keepalive:
    def __init__(self, svc: Services):
        self.svc = svc
        self.interval = svc.settings.keepalive_seconds
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def working_on(self, job_id: str):
        """While the block runs, the job's heartbeat and the process's leases are kept fresh."""
        self._ensure_thread()
        with self._lock:
            self._jobs.add(job_id)
        try:
            yield
        finally:
            with self._lock:
                self._jobs.discard(job_id)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="swapline-keepalive", daemon=True)
            self._thread.start()

    def beat(self) -> None:
        """One refresh: every tracked job's heartbeat, every held lease. Raises redis errors."""
        with self._lock:
            jobs = list(self._jobs)
        for job_id in jobs:
            self.svc.jobs.touch(job_id)
        self.svc.locks.renew_held()

    def _run(self) -> None:
        while True:
            try:
                self.beat()
                wait = self.interval
            except redis.RedisError as exc:
                log.warning("event=keepalive.redis_error error=%r", str(exc))
                wait = min(RETRY_SECONDS, self.interval)
            except Exception:  # never let the thread die: the job would look dead to the other workers
                log.exception("event=keepalive.error")
                wait = min(RETRY_SECONDS, self.interval)
            self._wake.wait(wait)
