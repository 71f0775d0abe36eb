"""The domain services one process uses, built from settings in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from shared.collections import CollectionStore
from shared.embedders import Embedder, make_embedder
from shared.jobs import JobStore
from shared.locks import RebuildLocks
from shared.pointers import Pointers
from shared.redisconn import connect
from shared.settings import Settings
from shared.storage import Storage


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    locks: RebuildLocks
    pointers: Pointers
    collections: CollectionStore
    storage: Storage
    # enqueue(kind, job_id): send the job's task by name.
    enqueue: Callable[[str, str], None]
    torch_threads: int = 1
    _embedder: Embedder | None = field(default=None, repr=False)

    @property
    def embedder(self) -> Embedder:
        """Created on first use, once per process (the real model is heavy)."""
        if self._embedder is None:
            self._embedder = make_embedder(self.settings, self.torch_threads)
        return self._embedder


def build_services(settings: Settings, enqueue: Callable[[str, str], None], torch_threads: int,
                   client: redis.Redis | None = None) -> Services:
    client = client or connect(settings.redis_url)
    return Services(
        settings=settings,
        redis=client,
        jobs=JobStore(client, settings.events_max_len),
        locks=RebuildLocks(client, settings.lock_ttl_seconds),
        pointers=Pointers(client, settings.versions_keep, settings.events_max_len),
        collections=CollectionStore(client),
        storage=Storage(settings.data_dir),
        enqueue=enqueue,
        torch_threads=torch_threads,
    )
