"""The domain services one process uses, built from settings in one place.

`Services` holds the Redis connection and every store built on it (`shared.store`); domain code and
the web side reach Redis only through those stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from shared import keys
from shared.index.calibration import CalibratedIngest, CalibratedQueries
from shared.index.embedcache import EmbeddingCache, NoCache, open_cache
from shared.index.embedders import Embedder, make_embedder
from shared.settings import Settings
from shared.storage import Storage
from shared.store.broker import BrokerView
from shared.store.collections import CollectionStore
from shared.store.conn import connect
from shared.store.counters import WorkCounters
from shared.store.events import EventLog
from shared.store.fanout import FanOut
from shared.store.history import JobHistory
from shared.store.idempotency import IdempotencyStore
from shared.store.jobs import JobStore
from shared.store.layout import LayoutStore
from shared.store.locks import RebuildLocks, TokenLock
from shared.store.pointers import Pointers
from shared.store.quality import QualityStore
from shared.store.replicas import ReplicaStore
from shared.store.sources import SourceStore
from shared.store.webhooks import WebhookStore

# A pending Idempotency-Key claim expires after this long should its process die mid-request; well
# above any request's run time (gunicorn kills a request at its timeout).
IDEMPOTENCY_PENDING_SECONDS = 300


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis  # the connection; state is reached through the stores below
    jobs: JobStore
    history: JobHistory
    locks: RebuildLocks
    sweep_lock: TokenLock
    recover_lock: TokenLock
    collect_lock: TokenLock
    upgrade_lock: TokenLock
    layout: LayoutStore
    pointers: Pointers
    collections: CollectionStore
    quality: QualityStore
    replicas: ReplicaStore
    events: EventLog
    idempotency: IdempotencyStore
    broker: BrokerView
    counters: WorkCounters
    webhooks: WebhookStore
    webhook_dispatch_lock: TokenLock
    sources: SourceStore
    fanout: FanOut
    storage: Storage
    # enqueue(kind, job_id): send the job's task by name.
    enqueue: Callable[[str, str], None]
    torch_threads: int = 1
    # Whether this process may calibrate the MiniLM runtimes (a worker); the API only reads the record.
    calibrates: bool = False
    _embedder: Embedder | None = field(default=None, repr=False)
    _embed_cache: EmbeddingCache | NoCache | None = field(default=None, repr=False)

    @property
    def embedder(self) -> Embedder:
        """Created on first use, once per process (the real model is heavy)."""
        embedder = self._embedder
        if embedder is None:
            if self.settings.embedder != "minilm":
                embedder = make_embedder(self.settings, self.torch_threads)
            elif self.calibrates:
                embedder = CalibratedIngest(self.settings, self.torch_threads)
            else:
                embedder = CalibratedQueries(self.settings, self.torch_threads)
            self._embedder = embedder
        return embedder

    def embedder_status(self) -> dict:
        """The setting, the runtime in use and this host's calibration (README "Embedding runtimes")."""
        embedder = self.embedder
        if isinstance(embedder, CalibratedIngest | CalibratedQueries):
            return embedder.status()
        return {"setting": self.settings.embedder, "model": embedder.model_id, "calibration": {"state": "forced"}}

    @property
    def embed_cache(self) -> EmbeddingCache | NoCache:
        """The embedding cache under the data dir, opened on first use, once per process."""
        if self._embed_cache is None:
            limit = self.settings.embed_cache_bytes
            if limit <= 0:
                self._embed_cache = NoCache()
            else:
                cache = open_cache(self.storage.embedding_cache_dir(), limit)
                if cache is None:
                    return NoCache()  # cannot be opened (a full volume): tried again on the next batch
                self._embed_cache = cache
        return self._embed_cache

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        if self._embed_cache is not None:
            self._embed_cache.close()
        self.redis.close()


def build_services(settings: Settings, enqueue: Callable[[str, str], None], torch_threads: int,
                   client: redis.Redis | None = None, calibrates: bool = False) -> Services:
    client = client or connect(settings)
    return Services(
        settings=settings,
        redis=client,
        jobs=JobStore(client, settings.events_max_len),
        history=JobHistory(client),
        locks=RebuildLocks(client, settings.lock_ttl_seconds),
        sweep_lock=TokenLock(client, keys.sweep_lock()),
        recover_lock=TokenLock(client, keys.recover_lock()),
        collect_lock=TokenLock(client, keys.collect_lock()),
        upgrade_lock=TokenLock(client, keys.upgrade_lock()),
        layout=LayoutStore(client),
        pointers=Pointers(client, settings.versions_keep, settings.events_max_len),
        collections=CollectionStore(client),
        quality=QualityStore(client),
        replicas=ReplicaStore(client, settings.replica_ttl_seconds, settings.reader_lease_seconds),
        events=EventLog(client, settings.events_max_len),
        idempotency=IdempotencyStore(client, settings.idempotency_ttl_seconds, IDEMPOTENCY_PENDING_SECONDS),
        broker=BrokerView(client),
        counters=WorkCounters(client),
        webhooks=WebhookStore(client, settings.webhook_deliveries_keep, settings.job_ttl_seconds),
        webhook_dispatch_lock=TokenLock(client, keys.webhook_dispatch_lock()),
        sources=SourceStore(client),
        fanout=FanOut(client),
        storage=Storage(settings.data_dir),
        enqueue=enqueue,
        torch_threads=torch_threads,
        calibrates=calibrates,
    )
