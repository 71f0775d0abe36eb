"""A worker bootstep that runs Swapline's housekeeping (recovery of lost jobs, the sweep, version
collection, the webhook dispatcher: `shared.jobs.housekeeping`) in a thread of the worker's main
process, so every worker does it on its own clock, whether or not beat runs and whatever its pool is
busy with."""

from __future__ import annotations

from celery import bootsteps

from shared.jobs.housekeeping import HousekeepingThread


class Housekeeping(bootsteps.StartStopStep):
    # Started after the pool, so the pool's processes are forked before this thread exists.
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.thread: HousekeepingThread | None = None

    def start(self, worker) -> None:
        # The app is reached through the worker it runs in (the app module adds this step: importing it
        # here would be a circle).
        self.thread = HousekeepingThread(worker.app.swapline_services, worker.app.send_delivery)
        self.thread.start()

    def stop(self, worker) -> None:
        if self.thread is not None:
            self.thread.stop()
