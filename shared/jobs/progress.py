"""Progress of a running job, throttled so a fast loop does not flood Redis or the event stream."""

from __future__ import annotations

import time

from shared.store.jobs import JobStore


class ProgressReporter:
    """Throttles progress writes: at most every `every` items or every `interval` seconds."""

    def __init__(self, jobs: JobStore, job_id: str, stage: str, total: int, every: int, interval: float = 1.0):
        self.jobs, self.job_id, self.stage, self.total = jobs, job_id, stage, total
        self.every, self.interval = max(1, every), interval
        self.started = time.monotonic()
        self._last_done, self._last_time = -1, 0.0
        self.update(0, force=True)

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and done - self._last_done < self.every and now - self._last_time < self.interval:
            return
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 and done else None
        self.jobs.progress(self.job_id, self.stage, done, self.total, rate)
        self._last_done, self._last_time = done, now

    def finish(self) -> float:
        self.update(self.total, force=True)
        return time.monotonic() - self.started
