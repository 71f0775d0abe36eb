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
import os
import socket
import threading
import time

import redis

from shared.jobstates import RUNNING
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


def runner_id() -> str:
    """Who runs a job: host and process, so a redelivery on the same host can tell a dead run at once."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(runner: str) -> bool | None:
    """Whether the process named by `runner` lives, when it ran on this host (None: another host)."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def another_run_is_live(svc: Services, job_id: str, me: str) -> bool:
    """True when a delivery of a running job finds another run of it still alive: its process lives
    (when it is on this host) and its heartbeat is fresher than the lease. Such a delivery is a
    duplicate (kombu restoring a message past the visibility timeout, say) and must do nothing: the
    live run finishes the job, and should it die, the recovery check sends the job again. A run that
    died (gone from this host, or silent for a whole lease) is taken over at once."""
    state, heartbeat, runner = svc.jobs.run_info(job_id)
    if state != RUNNING or not runner or runner == me:
        return False
    if _alive_here(runner) is False:
        return False
    return time.time() - heartbeat < svc.settings.lock_ttl_seconds
