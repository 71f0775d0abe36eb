"""The embedding cache: (model, content hash) -> vector, shared by every worker and collection.

It lives under the data dir (`cache/embeddings/`) in a diskcache `Cache` (SQLite in WAL mode, safe for
several processes writing at once), survives restarts, and is bounded: past `size_limit` bytes the
least recently used entries go first. A vector is 4 bytes per dimension (1.5 KiB for MiniLM), so the
default 1 GiB holds about 600,000 chunks. Losing the cache only costs re-embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class EmbeddingCache:
    def __init__(self, directory: Path, size_limit: int):
        import diskcache

        directory.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(directory), size_limit=int(size_limit),
                                     eviction_policy="least-recently-used")

    @staticmethod
    def _key(model_id: str, content_hash: str) -> str:
        return f"{model_id}|{content_hash}"

    def get_many(self, model_id: str, hashes: list[str], dim: int) -> dict[str, np.ndarray]:
        """The cached vectors among `hashes` (one transaction: reads and their LRU stamps together)."""
        found: dict[str, np.ndarray] = {}
        with self.cache.transact():
            for h in hashes:
                raw = self.cache.get(self._key(model_id, h))
                if isinstance(raw, bytes) and len(raw) == 4 * dim:
                    found[h] = np.frombuffer(raw, dtype=np.float32).copy()
        return found

    def put_many(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        with self.cache.transact():
            for h, vector in vectors.items():
                self.cache.set(self._key(model_id, h), np.asarray(vector, dtype=np.float32).tobytes())

    def volume(self) -> int:
        """Bytes the cache holds now."""
        return int(self.cache.volume())

    def close(self) -> None:
        self.cache.close()


class NoCache:
    """SWAPLINE_EMBED_CACHE_BYTES=0: nothing is kept."""

    def get_many(self, model_id: str, hashes: list[str], dim: int) -> dict[str, np.ndarray]:
        return {}

    def put_many(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        return None

    def volume(self) -> int:
        return 0

    def close(self) -> None:
        return None
