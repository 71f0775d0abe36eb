"""The embedding cache: (model, content hash) -> vector, shared by every worker and collection.

It lives under the data dir (`cache/embeddings/`) in a diskcache `Cache` (SQLite in WAL mode, safe for
several processes writing at once), survives restarts, and is bounded: past `size_limit` bytes the
least recently used entries go first. A vector is 4 bytes per dimension (1.5 KiB for MiniLM), so the
default 1 GiB holds about 600,000 chunks. Losing the cache only costs re-embedding.

**Raw bytes only.** diskcache pickles any value that is not bytes, str or a number, and unpickles what
it reads back; anyone who can write to the data dir could then run code in every worker. Values are
written as raw float32 bytes and read through `RawDisk`, which never unpickles a key or a value: an
entry stored any other way reads as missing. A vector is taken only when its length is `dim * 4`.

**An optimisation, never a failure.** When the cache cannot be read or written (the volume is full:
SQLite's `database or disk is full`, ENOSPC; a locked or damaged database), the ingest goes on without
it: the chunk is embedded (or not stored) and one warning per process says so.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import diskcache
import numpy as np
from diskcache.core import MODE_BINARY, MODE_RAW

log = logging.getLogger(__name__)

# What a cache that cannot read or write raises: SQLite (full, locked, damaged), the file system
# (ENOSPC writing a large value, permissions) and diskcache's own lock timeout.
CACHE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, diskcache.Timeout)


class UnsafeEntry(ValueError):
    """A key or value stored other than as raw bytes or text (a pickle): never read."""


class RawDisk(diskcache.Disk):
    """diskcache's Disk without pickle: bytes and str are stored and read raw; anything else is refused
    on write, and a pickled key or value found in the database is never loaded."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not isinstance(value, bytes):
            raise UnsafeEntry(f"the embedding cache stores bytes only, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode not in (MODE_RAW, MODE_BINARY):
            raise UnsafeEntry(f"cache entry stored with mode {mode} (not raw bytes) is not read")
        return super().fetch(mode, filename, value, read)

    def get(self, key, raw):
        if not raw:
            raise UnsafeEntry("pickled cache key is not read")
        return super().get(key, raw)


_warned = False


def _warn_once(action: str, exc: BaseException) -> None:
    """One warning line per process: a full volume would otherwise log on every batch."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("event=embed_cache.unavailable action=%s error=%r note=%r", action, str(exc)[:200],
                    "ingest goes on without the embedding cache (logged once per process)")


class EmbeddingCache:
    def __init__(self, directory: Path, size_limit: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(directory), size_limit=int(size_limit),
                                     eviction_policy="least-recently-used", disk=RawDisk)

    @staticmethod
    def _key(model_id: str, content_hash: str) -> str:
        return f"{model_id}|{content_hash}"

    def get_many(self, model_id: str, hashes: list[str], dim: int) -> dict[str, np.ndarray]:
        """The cached vectors among `hashes` (one transaction: reads and their LRU stamps together)."""
        found: dict[str, np.ndarray] = {}
        try:
            with self.cache.transact():
                for h in hashes:
                    try:
                        raw = self.cache.get(self._key(model_id, h))
                    except UnsafeEntry:
                        log.warning("event=embed_cache.unsafe_entry model=%s hash=%s", model_id, h[:16])
                        continue
                    if isinstance(raw, bytes) and len(raw) == 4 * dim:
                        found[h] = np.frombuffer(raw, dtype=np.float32).copy()
        except CACHE_ERRORS as exc:
            _warn_once("read", exc)
            return {}
        return found

    def has_many(self, model_id: str, hashes: list[str]) -> set[str]:
        """Which of `hashes` the cache holds, read without touching their LRU stamps (a dry run)."""
        try:
            return {h for h in hashes if self._key(model_id, h) in self.cache}
        except CACHE_ERRORS as exc:
            _warn_once("read", exc)
            return set()

    def put_many(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        try:
            with self.cache.transact():
                for h, vector in vectors.items():
                    self.cache.set(self._key(model_id, h), np.asarray(vector, dtype=np.float32).tobytes())
        except CACHE_ERRORS as exc:
            _warn_once("write", exc)

    def volume(self) -> int:
        """Bytes the cache holds now."""
        return int(self.cache.volume())

    def close(self) -> None:
        self.cache.close()


def open_cache(directory: Path, size_limit: int) -> EmbeddingCache | None:
    """The cache, or None (with the once-per-process warning) when it cannot be opened."""
    try:
        return EmbeddingCache(directory, size_limit)
    except CACHE_ERRORS as exc:
        _warn_once("open", exc)
        return None


class NoCache:
    """SWAPLINE_EMBED_CACHE_BYTES=0: nothing is kept."""

    def get_many(self, model_id: str, hashes: list[str], dim: int) -> dict[str, np.ndarray]:
        return {}

    def has_many(self, model_id: str, hashes: list[str]) -> set[str]:
        return set()

    def put_many(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        return None

    def volume(self) -> int:
        return 0

    def close(self) -> None:
        return None
