"""Prometheus metrics at /metrics: request and search latency, index loads and swaps, jobs by kind and
state, queue depth, the version each API process serves, and chunks embedded.

Named the Prometheus way: counters end in `_total`, durations are in seconds and end in `_seconds`, and
nothing exports a rate: `rate(swapline_chunks_embedded_total[5m])` is the embedding throughput, and
divided by `rate(swapline_embed_seconds_total[5m])` the speed while embedding.

Latency histograms and counters belong to the process that observed them. Under gunicorn with several
workers, `webapp/api/gunicorn_conf.py` sets PROMETHEUS_MULTIPROC_DIR and prometheus_client keeps them
in files there, so any worker's /metrics sums every worker. Job, queue and index figures are read from
Redis at scrape time (the index version per API process from the replicas' heartbeats), so they are the
same whichever worker answers. Each app has its own registry (tests build several apps in one process).
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from shared.tasknames import QUEUES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOBS_SCANNED = 10_000
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SEARCH_ENDPOINT = "search.Search"


class RedisCollector:
    """Figures read from Redis when Prometheus scrapes."""

    def __init__(self, runtime):
        self.rt = runtime

    def collect(self):
        svc = self.rt.svc
        jobs = GaugeMetricFamily("swapline_jobs", "Jobs kept in history, by kind and state", labels=["kind", "state"])
        for (kind, state), n in sorted(svc.history.count_by_kind_state(JOBS_SCANNED).items()):
            jobs.add_metric([kind, state], n)
        yield jobs

        queued = GaugeMetricFamily("swapline_queue_jobs", "Jobs in state queued, per Celery queue", labels=["queue"])
        messages = GaugeMetricFamily("swapline_queue_messages", "Messages waiting in the broker, per queue",
                                     labels=["queue"])
        for queue in QUEUES:
            queued.add_metric([queue], svc.jobs.queued_depth(queue))
            messages.add_metric([queue], svc.broker.queue_length(queue))
        yield queued
        yield messages

        served = GaugeMetricFamily("swapline_index_version", "Index version each live API process serves",
                                   labels=["collection", "replica"])
        for replica, versions in sorted(svc.replicas.versions().items()):
            for name, version in sorted(versions.items()):
                served.add_metric([name, replica], version)
        yield served
        names = svc.collections.names()
        published = GaugeMetricFamily("swapline_index_published_version", "Published index version",
                                      labels=["collection"])
        vectors = GaugeMetricFamily("swapline_index_vectors", "Vectors in the published index", labels=["collection"])
        for name, pointer in sorted(svc.pointers.get_many(names).items()):
            published.add_metric([name], pointer["version"])
            vectors.add_metric([name], pointer.get("vectors", 0))
        yield published
        yield vectors

        # prometheus_client appends _total to counter families.
        chunks = CounterMetricFamily("swapline_chunks_embedded", "Chunks embedded by ingest jobs",
                                     labels=["collection"])
        seconds = CounterMetricFamily("swapline_embed_seconds", "Seconds ingest jobs spent embedding",
                                      labels=["collection"])
        for name, (count, spent) in sorted(svc.counters.embedded().items()):
            chunks.add_metric([name], count)
            seconds.add_metric([name], spent)
        yield chunks
        yield seconds

        failing = GaugeMetricFamily("swapline_index_load_failing", "Attempts at loading a version an API process "
                                    "could not load (0 series when every process loads what is published)",
                                    labels=["collection", "replica", "version"])
        for replica, failed in sorted(svc.replicas.failures().items()):
            for name, failure in sorted(failed.items()):
                failing.add_metric([name, replica, str(failure.get("version"))], failure.get("attempts", 1))
        yield failing


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV)
        self.request_seconds = Histogram("swapline_http_request_seconds", "HTTP request latency by route",
                                         ["method", "route", "status"], buckets=LATENCY_BUCKETS,
                                         registry=self.registry)
        self.search_seconds = Histogram("swapline_search_seconds", "Search latency (embed + FAISS + chunk reads)",
                                        ["collection", "cache"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.load_seconds = Histogram("swapline_index_load_seconds", "Time to load and warm a new index version",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.load_errors = Counter("swapline_index_load_errors", "Index versions that failed to load",
                                   registry=self.registry)
        self.swaps = Counter("swapline_index_swaps", "Index versions swapped in by API processes",
                             registry=self.registry)

    def init_app(self, app: Flask, runtime) -> None:
        self.redis_collector = RedisCollector(runtime)
        if not self.multiprocess_dir:
            self.registry.register(self.redis_collector)
        runtime.watcher.on_load = self._on_load
        app.before_request(self._start)
        app.after_request(self._finish)
        app.add_url_rule("/metrics", "metrics", self._expose)
        app.extensions["swapline_metrics"] = self

    def _on_load(self, seconds: float | None) -> None:
        if seconds is None:
            self.load_errors.inc()
        else:
            self.load_seconds.observe(seconds)
            self.swaps.inc()

    @staticmethod
    def _start() -> None:
        g.swapline_started = time.perf_counter()

    def _finish(self, response):
        started = g.pop("swapline_started", None)
        if started is not None and request.url_rule is not None and request.url_rule.rule != "/metrics":
            searched = request.view_args.get("name", "") if request.endpoint == SEARCH_ENDPOINT else None
            self.observe(request.method, request.url_rule.rule, response.status_code,
                         time.perf_counter() - started, searched, response.headers.get("X-Cache", "miss"))
        return response

    def observe(self, method: str, route: str, status: int, elapsed: float, searched: str | None = None,
                cache: str = "miss") -> None:
        """One answered request: its latency by route and status, and a search's by collection
        (`searched`) and result cache when it answered 200."""
        self.request_seconds.labels(method, route, str(status)).observe(elapsed)
        if searched is not None and status == 200:
            self.search_seconds.labels(searched, cache).observe(elapsed)

    def _scrape_registry(self) -> CollectorRegistry:
        if not self.multiprocess_dir:
            return self.registry
        # Every worker's files, summed; a fresh registry per scrape, as prometheus_client documents.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(self.redis_collector)
        return registry

    def _expose(self):
        return Response(generate_latest(self._scrape_registry()), mimetype=CONTENT_TYPE_LATEST)
