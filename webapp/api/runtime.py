"""What one app instance runs: domain services, the Celery sender, the live indexes and their watcher
thread. The `swapline` extension binds a `Runtime` to each app; views reach it as `swapline.runtime`."""

from __future__ import annotations

import threading

import faiss
from flask import Flask, current_app

from shared.celeryconfig import enqueue, make_celery
from shared.services import Services, build_services
from shared.settings import Settings
from webapp.api.eventhub import EventHub
from webapp.api.live import IndexWatcher, LiveIndexes
from webapp.api.pinned import PinnedVersions

EXTENSION = "swapline"


# Each request searches on its own thread; FAISS's OpenMP threads inside one small query only contend
# with those threads and the query embedding (on 2 busy cores, hybrid search p99 fell from ~24 ms to
# under 1 ms with one thread: README "Search").
FAISS_THREADS = 1


class Runtime:
    def __init__(self, settings: Settings):
        faiss.omp_set_num_threads(FAISS_THREADS)
        self.settings = settings
        self.celery = make_celery(settings)
        self.svc: Services = build_services(settings, lambda kind, job_id: enqueue(self.celery, kind, job_id),
                                            torch_threads=settings.api_torch_threads)
        self.live = LiveIndexes(settings.search_cache_size)
        # Open SSE streams of this app. Each holds a server thread (gunicorn_conf adds one thread per slot
        # to the request threads, so streams never take a thread a search needs) and waits on the hub.
        self.sse_slots = threading.BoundedSemaphore(settings.sse_max_streams)
        self.events_hub = EventHub(settings)
        self.watcher = IndexWatcher(self.svc, self.live, warm_embedder=settings.embedder != "hash")
        # Kept versions opened for reads that ask for one, leased under the watcher's replica id.
        self.pinned = PinnedVersions(self.svc, self.watcher.replica_id, settings.pinned_versions,
                                     settings.search_cache_size)
        self.watcher.pinned_leases = self.pinned.held

    def start(self) -> None:
        self.watcher.start()
        self.events_hub.start()

    def close(self) -> None:
        self.watcher.stop()
        self.pinned.close_all()
        if self.events_hub.is_alive():
            self.events_hub.stop()
        self.svc.close()


class Swapline:
    """The extension: app-independent, so modules import it once; each app has its own Runtime."""

    def init_app(self, app: Flask, settings: Settings) -> None:
        app.extensions[EXTENSION] = Runtime(settings)

    @staticmethod
    def runtime_of(app: Flask) -> Runtime:
        return app.extensions[EXTENSION]

    @staticmethod
    def start(app: Flask) -> None:
        """Start the index watcher once the app is fully set up (hooks such as metrics are in place)."""
        app.extensions[EXTENSION].start()

    @property
    def runtime(self) -> Runtime:
        return current_app.extensions[EXTENSION]


swapline = Swapline()
