"""The live indexes of this API process: one holder, one watcher thread that swaps them.

Readers take a reference to the current version (`shared.index.parts.open_version`) and search it
without any lock; the watcher loads a newer version off the request path, warms it, and replaces one
reference. A query in flight finishes on the version it started with.

A version that cannot be loaded (damaged, truncated, checksum mismatch) is never served: the process
keeps serving what it has, reports the failure (an `index.load_failed` event, the load-error metric,
its replica heartbeat, which the collection's status shows) and tries again with growing pauses, not
on every poll. A process that has nothing to serve for the collection (it just started) serves the
newest loadable version from the pointer history meanwhile. The watcher also tells whether Redis
answers (`redis_down`), so searches can be answered from memory while it does not.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from shared import eventnames as names
from shared.backoff import Backoff, doubling
from shared.index.parts import ServedVersion, open_version
from shared.jobs import upgrade
from shared.services import Services
from webapp.api.catalog import Catalog

log = logging.getLogger(__name__)


@contextmanager
def collector_paused():
    """Python's cyclic collector off while a version loads. A version's tables are millions of small
    objects; each collection the load would trigger walks every object of the versions already served
    while it holds the GIL, and every search thread waits (measured: stalls of 1.6 s while loading a
    1M-row documents table beside another). Those tables hold no reference cycles, so reference
    counting frees them when the version is dropped, frozen or not."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class ResultCache:
    """A small LRU of search results derived from one served version. It lives and dies with that
    version's `Served` entry, so a swap drops every result computed from the old index."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@dataclass
class LoadFailure:
    fence: int
    version: int
    error: str
    attempts: int
    since: float
    retry_at: float  # time.monotonic()

    def public(self) -> dict:
        return {"version": self.version, "error": self.error[:300], "attempts": self.attempts, "since": self.since}


# Pauses between load attempts of a version that failed: doubling from the first, up to the last.
LOAD_RETRY = (2.0, 300.0)
REDIS_RETRY = (0.5, 5.0)


@dataclass(frozen=True)
class Served:
    fence: int
    version: ServedVersion
    cache: ResultCache


class LiveIndexes:
    """Collection name -> the version this process serves. The mapping is replaced, never mutated,
    so a reader's `get` needs no lock; only the watcher writes, under `_write`."""

    def __init__(self, cache_size: int):
        self.cache_size = cache_size
        self._current: dict[str, Served] = {}
        self._write = threading.Lock()

    def get(self, name: str) -> Served | None:
        """What this process serves for `name`: keep the reference for the whole query."""
        return self._current.get(name)

    def fence(self, name: str) -> int:
        served = self._current.get(name)
        return served.fence if served else 0

    def swap(self, name: str, fence: int, version: ServedVersion) -> None:
        with self._write:
            self._current = {**self._current, name: Served(fence, version, ResultCache(self.cache_size))}

    def drop(self, name: str) -> None:
        with self._write:
            self._current = {k: v for k, v in self._current.items() if k != name}

    def all(self) -> dict[str, Served]:
        return self._current

    def served(self) -> dict[str, int]:
        return {name: s.version.version for name, s in self._current.items()}


class IndexWatcher(threading.Thread):
    """Follows the published pointers: swap messages for speed, polling because pub/sub can drop
    messages (and a process that starts late must catch up)."""

    def __init__(self, svc: Services, live: LiveIndexes, warm_embedder: bool):
        super().__init__(name="swapline-index-watcher", daemon=True)
        self.svc, self.live = svc, live
        self.warm_embedder = warm_embedder
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.ready = threading.Event()
        # What searches know of each collection (exists, default mode), kept by every sync below.
        self.catalog = Catalog(svc.collections.search_defaults)
        # Set while Redis does not answer (the watcher's reads, or a search's): searches answer from memory
        # (degraded) meanwhile. Cleared by the watcher's next successful sync.
        self.redis_down = threading.Event()
        self._stopping = threading.Event()
        self.last_sync: float = 0.0
        self.errors = 0
        self.failures: dict[str, LoadFailure] = {}
        # Collections with a published version of which this process can serve none at all.
        self.unservable: set[str] = set()
        # Set while the data dir or Redis is in a layout newer than this release reads: nothing is served.
        self.layout_refused: str | None = None
        self._layout_checked = False
        # Called with the load time of each swap, or None when a load failed (metrics hook).
        self.on_load = lambda seconds: None
        # The (collection, version) pairs this process holds open for reads pinned to a version
        # (webapp.api.pinned): the heartbeat renews their reader leases too.
        self.pinned_leases: Callable[[], list[tuple[str, int]]] = lambda: []

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.join(timeout)

    def run(self) -> None:
        poll = self.svc.settings.watcher_poll_seconds
        if self.warm_embedder:
            self.svc.embedder.embed(["warm up"])  # the model loads here, not in the first search
        backoff = Backoff(*REDIS_RETRY)
        while not self._stopping.is_set():
            pubsub = None
            try:
                pubsub = self.svc.pointers.subscribe()
                self.sync()
                self.ready.set()
                if ended := backoff.succeeded():
                    log.info("event=watcher.redis_back replica=%s after_failures=%s", self.replica_id, ended)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=poll)
                    if message and message.get("type") == "message":
                        name = json.loads(message["data"]).get("collection")
                        self.sync([name] if name else None)
                    if time.monotonic() - self.last_sync >= poll:
                        self.sync()
            except (redis.RedisError, OSError) as exc:
                self.redis_down.set()
                self.errors += 1
                delay = backoff.failed()
                if backoff.worth_logging:
                    log.warning("event=watcher.redis_error replica=%s error=%r retry_in=%.1f", self.replica_id,
                                str(exc), delay)
                self._stopping.wait(delay)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # closing a broken connection may fail again; nothing to do
                        pass
        self._unregister()

    def sync(self, only: list[str] | None = None) -> None:
        """Load every collection (or `only` these) whose published pointer differs from what this process
        serves (a version that failed to load is tried again only once its pause has passed)."""
        if not self._layout_checked:
            try:
                upgrade.check(self.svc)  # refuse a newer layout, migrate an older one, before any load
            except upgrade.LayoutTooNew as exc:
                if self.layout_refused is None:
                    log.error("event=watcher.layout_too_new replica=%s error=%r", self.replica_id, str(exc))
                self.layout_refused = str(exc)
                return
            self._layout_checked, self.layout_refused = True, None
        full = only is None
        since = self.catalog.mark()  # before any read: a write landing meanwhile is newer than this sync
        asked = self.svc.collections.names() if only is None else only
        # Searches read this instead of Redis: a created, dropped or changed collection is announced on
        # the swap channel (a targeted sync here), a lost message is caught by the next full sync.
        modes = self.svc.collections.search_catalog(asked)
        if full:
            self.catalog.replace(modes, since)
        else:
            for name in asked:
                self.catalog.update(name, name in modes, modes.get(name), since)
        collections = [name for name in asked if name in modes]
        for gone in (set(self.live.served()) - set(collections)) if full else set(asked) - set(collections):
            self.live.drop(gone)
        pointers = self.svc.pointers.get_many(collections)
        now = time.monotonic()
        for name, pointer in pointers.items():
            if pointer["fence"] == self.live.fence(name):
                self.failures.pop(name, None)
                continue
            failure = self.failures.get(name)
            if failure and failure.fence == pointer["fence"] and now < failure.retry_at:
                continue
            self._load(name, pointer)
        self.redis_down.clear()
        if full:
            for gone in set(self.failures) - set(pointers):
                self.failures.pop(gone)
            self.unservable = {name for name in pointers if self.live.get(name) is None}
            self.last_sync = time.monotonic()
            self._heartbeat()

    def _open(self, pointer: dict) -> ServedVersion:
        with collector_paused():
            version = open_version(self.svc.storage.resolve_relative(pointer["path"]), pointer["version"])
        # The version's tables are now in the permanent generation: later collections do not walk them.
        gc.freeze()
        version.warm()
        return version

    def _load(self, name: str, pointer: dict) -> None:
        started = time.perf_counter()
        try:
            version = self._open(pointer)
        except Exception as exc:
            self._load_failed(name, pointer, exc)
            return
        self.failures.pop(name, None)
        before = self.live.served().get(name)
        self.live.swap(name, pointer["fence"], version)
        self._heartbeat()  # the new version's lease, before the old one's is released
        if before is not None and before != pointer["version"]:
            self.svc.replicas.release(self.replica_id, name, before)
        seconds = time.perf_counter() - started
        self.on_load(seconds)
        self.svc.events.append(names.INDEX_SWAPPED, collection=name, data={
            "version": pointer["version"], "replica": self.replica_id, "load_seconds": round(seconds, 4)})
        log.info("event=watcher.swapped replica=%s collection=%s version=%s vectors=%s load_seconds=%.4f",
                 self.replica_id, name, pointer["version"], version.vectors, seconds)

    def _load_failed(self, name: str, pointer: dict, exc: Exception) -> None:
        """Keep serving what we serve; report; try again after a pause that doubles each time."""
        self.on_load(None)
        before = self.failures.get(name)
        attempts = before.attempts + 1 if before and before.fence == pointer["fence"] else 1
        delay = doubling(LOAD_RETRY[0], attempts, LOAD_RETRY[1])
        error = f"{type(exc).__name__}: {exc}"
        self.failures[name] = LoadFailure(pointer["fence"], pointer["version"], error, attempts,
                                          before.since if before and attempts > 1 else time.time(),
                                          time.monotonic() + delay)
        log.warning("event=watcher.load_failed replica=%s collection=%s version=%s attempts=%s retry_in=%.0f "
                    "serving=%s error=%r", self.replica_id, name, pointer["version"], attempts, delay,
                    self.live.served().get(name), error)
        if attempts == 1:
            self.svc.events.append(names.INDEX_LOAD_FAILED, collection=name, data={
                "version": pointer["version"], "replica": self.replica_id, "error": error[:300],
                "serving": self.live.served().get(name)})
        if self.live.get(name) is None:
            self._fall_back(name, pointer)
        self._heartbeat()

    def _fall_back(self, name: str, failed: dict) -> None:
        """Serve the newest version from the pointer history that loads, while the published one
        cannot be (this process had nothing to serve for the collection)."""
        for entry in self.svc.pointers.history(name):
            if entry["version"] == failed["version"] or "path" not in entry:
                continue
            try:
                version = self._open(entry)
            except Exception as exc:
                log.warning("event=watcher.fallback_failed replica=%s collection=%s version=%s error=%r",
                            self.replica_id, name, entry["version"], f"{type(exc).__name__}: {exc}")
                continue
            self.live.swap(name, entry["fence"], version)
            log.warning("event=watcher.fallback replica=%s collection=%s version=%s published=%s",
                        self.replica_id, name, entry["version"], failed["version"])
            return

    def _heartbeat(self) -> None:
        self.svc.replicas.heartbeat(self.replica_id, self.live.served(),
                                    {name: f.public() for name, f in self.failures.items()}, self.pinned_leases())

    def _unregister(self) -> None:
        try:
            self.svc.replicas.unregister(self.replica_id, self.live.served(), self.pinned_leases())
        except redis.RedisError:
            pass  # the entry expires by itself
