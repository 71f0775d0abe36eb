"""The watcher's logic: which sources this process follows, and how file changes become reconciles.

Every watcher process lists the sources with `watch: true` and takes each one's lease (a Redis key
with a TTL, renewed every third of it); a source is followed by the one process holding its lease,
however many watchers run. A process that dies lets its leases expire and another takes them over.
Taking a lease (at start, or over from a dead watcher) queues a full reconcile, which catches whatever
changed while nobody watched. Changes (from watchfiles, which debounces them) are collected per source
as relative paths and submitted as a reconcile of those paths; while a reconcile of the source is
queued or running, they wait and are merged into the next one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shared.errors import JobInProgress
from shared.jobstates import QueueFull
from shared.services import Services
from shared.sources.submit import submit_reconcile
from shared.sources.walk import SKIP_DIRS

log = logging.getLogger(__name__)

FULL = None  # a pending reconcile of the whole source
MAX_PATHS = 2000  # past this many changed paths, one full walk is cheaper than the list


def relevant(folder: Path, path: str) -> str | None:
    """The path relative to the source folder, or None for changes that can never matter (outside
    the folder, inside .git/ or another skipped folder)."""
    rel = os.path.relpath(path, folder).replace(os.sep, "/")
    if rel == "." or rel.startswith("../"):
        return None
    if any(part in SKIP_DIRS for part in rel.split("/")[:-1]):
        return None
    return rel


class SourceWatch:
    """One followed source: a thread running watchfiles over its folder until stopped."""

    def __init__(self, source: dict, debounce_ms: int, on_change: Callable[[str, set[str]], None]):
        self.source = source
        self.folder = Path(source["path"])
        self.stop = threading.Event()
        self._debounce_ms = debounce_ms
        self._on_change = on_change
        self.thread = threading.Thread(target=self._run, name=f"watch-{source['id'][:8]}", daemon=True)

    def _run(self) -> None:
        import watchfiles

        keep = lambda _change, path: relevant(self.folder, path) is not None  # noqa: E731
        try:
            for changes in watchfiles.watch(self.folder, watch_filter=keep, debounce=self._debounce_ms,
                                            stop_event=self.stop, raise_interrupt=False):
                paths = {rel for _change, path in changes if (rel := relevant(self.folder, path))}
                if paths:
                    self._on_change(self.source["id"], paths)
        except Exception:  # a folder removed under us: the next sync stops or restarts this watch
            log.exception("event=watch.error source=%s folder=%s", self.source["id"], self.folder)


class WatchManager:
    def __init__(self, svc: Services, token: str):
        self.svc, self.token = svc, token
        self.watches: dict[str, SourceWatch] = {}
        self.pending: dict[str, set[str] | None] = {}
        self._lock = threading.Lock()

    # changes

    def note(self, source_id: str, paths: set[str] | None) -> None:
        """Merge changed paths (or FULL) into the source's next reconcile."""
        with self._lock:
            if source_id in self.pending and self.pending[source_id] is FULL:
                return
            if paths is FULL:
                self.pending[source_id] = FULL
                return
            merged = (self.pending.get(source_id) or set()) | paths
            self.pending[source_id] = FULL if len(merged) > MAX_PATHS else merged

    def flush(self) -> list[str]:
        """Submit a reconcile for every source with pending changes; keep those whose source is busy.
        Returns the ids of the jobs submitted."""
        with self._lock:
            todo = dict(self.pending)
        submitted = []
        for source_id, paths in todo.items():
            source = self.svc.sources.get(source_id)
            if source is None or source_id not in self.watches:
                self._drop_pending(source_id, paths)
                continue
            try:
                job = submit_reconcile(self.svc, source, sorted(paths) if paths is not FULL else None)
            except (JobInProgress, QueueFull):
                continue  # merged into the next try
            self._drop_pending(source_id, paths)
            submitted.append(job["id"])
            log.info("event=watch.reconcile source=%s job=%s paths=%s", source_id, job["id"],
                     "all" if paths is FULL else len(paths))
        return submitted

    def _drop_pending(self, source_id: str, sent: set[str] | None) -> None:
        """Forget what a submitted reconcile covers. Changes noted since the snapshot stay only when
        they are paths it did not name: the reconcile has not walked yet, so it sees the rest."""
        with self._lock:
            now = self.pending.get(source_id, FULL)
            rest = now - sent if now is not FULL and sent is not FULL else set()
            if rest:
                self.pending[source_id] = rest
            else:
                self.pending.pop(source_id, None)

    # leases

    def sync(self) -> None:
        """Take or renew the leases of watched sources; start and stop watches to match."""
        settings = self.svc.settings
        watched = {s["id"]: s for s in self.svc.sources.all() if s["watch"]}
        for source_id in list(self.watches):
            if source_id not in watched:
                self._stop(source_id, release=True)
        for source_id, source in watched.items():
            holding = self.svc.sources.acquire_watch(source_id, self.token, settings.watch_lease_seconds)
            if holding and source_id not in self.watches:
                self._start(source)
            elif not holding and source_id in self.watches:
                log.warning("event=watch.lease_lost source=%s", source_id)
                self._stop(source_id, release=False)

    def _start(self, source: dict) -> None:
        if not Path(source["path"]).is_dir():
            log.warning("event=watch.missing source=%s folder=%s", source["id"], source["path"])
        watch = SourceWatch(source, int(self.svc.settings.watch_debounce_seconds * 1000), self.note)
        self.watches[source["id"]] = watch
        watch.thread.start()
        self.note(source["id"], FULL)  # catch up on what changed while nobody watched
        log.info("event=watch.start source=%s folder=%s token=%s", source["id"], source["path"], self.token)

    def _stop(self, source_id: str, release: bool) -> None:
        watch = self.watches.pop(source_id, None)
        if watch is not None:
            watch.stop.set()
            watch.thread.join(10)
        if release:
            self.svc.sources.release_watch(source_id, self.token)
        with self._lock:
            self.pending.pop(source_id, None)
        log.info("event=watch.stop source=%s", source_id)

    def close(self) -> None:
        for source_id in list(self.watches):
            self._stop(source_id, release=True)

    def run(self, stop: threading.Event, tick: float = 0.25) -> None:
        """Sync leases every third of their TTL and flush changes every tick, until `stop` is set."""
        renew_every = max(1.0, self.svc.settings.watch_lease_seconds / 3)
        next_sync = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                try:
                    if now >= next_sync:
                        self.sync()
                        next_sync = now + renew_every
                    self.flush()
                except Exception:  # Redis away for a moment: try again next tick
                    log.exception("event=watch.loop_error")
                stop.wait(tick)
        finally:
            self.close()
