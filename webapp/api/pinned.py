"""Kept versions this API process does not serve, opened when a read asks for one: `version` on a search
or a document read, or a listing cursor that started on a version since swapped away.

A pinned version is opened on demand from nothing but the request (memory-mapped, like a served one, and
not warmed: only the pages a read touches are faulted in). The process keeps the last few it used
(`SWAPLINE_PINNED_VERSIONS`, least recently used closed first) and holds a reader lease on each from
before its files are read until it is closed, renewed with the watcher's heartbeat, so version
collection never deletes one under a reader. Each has its own result cache: an answer from a pinned
version never lands in the served version's cache.

Loads are bounded: one load at a time per version, in a thread of its own; every request that wants
that version waits for the same load, at most `load_wait` seconds (then 503 with Retry-After; the load
goes on and a retry finds it open). A version that failed to load is refused for `failure_pause`
seconds before it is tried again, so a damaged version costs one load per pause, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from shared.index.parts import open_version
from shared.jobs.versions import kept_versions
from shared.services import Services
from webapp.api.live import ResultCache, Served, collector_paused

log = logging.getLogger(__name__)

LOAD_WAIT_SECONDS = 10.0
FAILURE_PAUSE_SECONDS = 30.0
RETRY_AFTER_SECONDS = 2
# Versions opening at once in one process: a reader asking for every kept version of every collection
# gets 503s, not as many loads (a format-1 version parses onto the heap).
MAX_LOADS = 1


class VersionNotKept(Exception):
    """The version asked for is not one a read may use: never published, no longer among the kept
    versions, or it cannot be loaded. `kept` lists those that are, newest publish first."""

    def __init__(self, name: str, version: int, kept: list[int], reason: str):
        super().__init__(f"version {version} of {name!r} {reason}; kept versions: {kept}")
        self.version, self.kept, self.reason = version, kept, reason


class VersionLoading(Exception):
    """The version is being opened and did not open within the wait: retry after `retry_after` s."""

    def __init__(self, name: str, version: int):
        super().__init__(f"version {version} of {name!r} is still being opened; retry shortly")
        self.retry_after = RETRY_AFTER_SECONDS


@dataclass
class _Load:
    done: threading.Event = field(default_factory=threading.Event)
    served: Served | None = None
    error: str = ""


class PinnedVersions:
    """(collection, version) -> an opened version this process holds for pinned reads: a bounded LRU whose
    entries each hold a reader lease under `replica_id` (the watcher's, which renews them)."""

    def __init__(self, svc: Services, replica_id: str, size: int, cache_size: int,
                 load_wait: float = LOAD_WAIT_SECONDS, failure_pause: float = FAILURE_PAUSE_SECONDS):
        self.svc, self.replica_id = svc, replica_id
        self.size, self.cache_size = size, cache_size
        self.load_wait, self.failure_pause = load_wait, failure_pause
        self._open: OrderedDict[tuple[str, int], Served] = OrderedDict()
        self._loads: dict[tuple[str, int], _Load] = {}
        self._failed: dict[tuple[str, int], tuple[float, str]] = {}  # -> (retry at, monotonic; error)
        self._lock = threading.Lock()

    def get(self, name: str, version: int) -> Served:
        """`version` of `name`, opened (or waited for); VersionNotKept when it is not a kept version or
        cannot be loaded, VersionLoading when its load outlasts the wait."""
        kept = kept_versions(self.svc, name)  # asked each time, so every process refuses the same versions
        key = (name, version)
        if version not in kept:
            self._close([key])  # no longer kept: let collection have it
            raise VersionNotKept(name, version, list(kept), "is not among the kept versions")
        with self._lock:
            served = self._open.get(key)
            if served is not None:
                self._open.move_to_end(key)
                return served
            retry_at, error = self._failed.get(key, (0.0, ""))
            if time.monotonic() < retry_at:
                raise VersionNotKept(name, version, list(kept), f"cannot be loaded ({error})")
            load = self._loads.get(key)
            if load is None:
                if len(self._loads) >= MAX_LOADS:
                    raise VersionLoading(name, version)  # another version is opening: one at a time
                load = self._loads[key] = _Load()
                threading.Thread(target=self._load, args=(key, kept[version], load), daemon=True,
                                 name=f"swapline-pin-{name}-v{version}").start()
        if not load.done.wait(self.load_wait):
            raise VersionLoading(name, version)
        if load.served is None:
            raise VersionNotKept(name, version, list(kept), f"cannot be loaded ({load.error})")
        return load.served

    def held(self) -> list[tuple[str, int]]:
        """The versions open now (their leases are renewed by the heartbeat)."""
        with self._lock:
            return list(self._open)

    def close_all(self) -> None:
        self._close(self.held())

    def _load(self, key: tuple[str, int], entry: dict, load: _Load) -> None:
        name, version = key
        started = time.perf_counter()
        try:
            # The lease first: a collection that reads the leases after this line keeps the files.
            self.svc.replicas.hold(self.replica_id, name, version)
            directory = (self.svc.storage.resolve_relative(entry["path"]) if entry.get("path")
                         else self.svc.storage.version_dir(name, version))
            # No gc.freeze here (the watcher freezes what it serves): it would also pin whatever garbage
            # request threads hold now, and pinned versions come and go.
            with collector_paused():
                opened = open_version(directory, version)
        except Exception as exc:  # a missing, damaged or foreign directory: refused, never served
            load.error = f"{type(exc).__name__}: {exc}"[:300]
            self._release(name, version)
            with self._lock:
                self._failed[key] = (time.monotonic() + self.failure_pause, load.error)
                self._loads.pop(key, None)
            log.warning("event=pinned.load_failed replica=%s collection=%s version=%s error=%r", self.replica_id,
                        name, version, load.error)
            load.done.set()
            return
        load.served = Served(int(entry.get("fence", version)), opened, ResultCache(self.cache_size))
        with self._lock:
            self._open[key] = load.served
            self._failed.pop(key, None)
            self._loads.pop(key, None)
            evicted = list(self._open)[:-self.size] if len(self._open) > self.size else []
        load.done.set()
        log.info("event=pinned.opened replica=%s collection=%s version=%s load_seconds=%.4f evicted=%s",
                 self.replica_id, name, version, time.perf_counter() - started, evicted)
        self._close(evicted)

    def _close(self, closing: list[tuple[str, int]]) -> None:
        """Drop these versions (a read holding one finishes on it) and release their leases."""
        for key in closing:
            with self._lock:
                dropped = self._open.pop(key, None)
            if dropped is not None:
                self._release(*key)

    def _release(self, name: str, version: int) -> None:
        try:
            self.svc.replicas.release(self.replica_id, name, version, pinned=True)
        except Exception as exc:  # the lease expires by itself (SWAPLINE_READER_LEASE_SECONDS)
            log.warning("event=pinned.release_failed replica=%s collection=%s version=%s error=%r",
                        self.replica_id, name, version, str(exc))
