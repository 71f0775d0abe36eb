"""Prometheus metrics at /metrics: request and search latency, jobs by kind and state, queue depth,
the index each collection serves here, swaps and load times, and the embed rate of recent ingests.

Each app has its own registry (tests build several apps in one process). Metrics about this process
(latency, swaps, served versions) are per API process; job and queue figures are read from Redis at
scrape time.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared.tasknames import QUEUES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOBS_SCANNED = 10_000


class RedisCollector:
    """Figures read from Redis and from this process's live indexes when Prometheus scrapes."""

    def __init__(self, runtime):
        self.rt = runtime

    def collect(self):
        svc = self.rt.svc
        jobs = GaugeMetricFamily("swapline_jobs", "Jobs kept in history, by kind and state", labels=["kind", "state"])
        counts, embed_rate = svc.history.count_by_kind_state(JOBS_SCANNED)
        for (kind, state), n in sorted(counts.items()):
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

        version = GaugeMetricFamily("swapline_index_version", "Index version served by this process",
                                    labels=["collection"])
        vectors = GaugeMetricFamily("swapline_index_vectors", "Vectors in the index served by this process",
                                    labels=["collection"])
        for name, served in sorted(self.rt.live.all().items()):
            version.add_metric([name], served.version.version)
            vectors.add_metric([name], served.version.vectors)
        yield version
        yield vectors

        swaps = GaugeMetricFamily("swapline_swaps", "Index swaps done by this process since it started")
        swaps.add_metric([], self.rt.live.swaps)
        yield swaps
        rate = GaugeMetricFamily("swapline_embed_rate", "Chunks embedded per second by the newest ingest job")
        rate.add_metric([], embed_rate or 0.0)
        yield rate


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram("swapline_http_request_seconds", "HTTP request latency by route",
                                         ["method", "route", "status"], buckets=LATENCY_BUCKETS,
                                         registry=self.registry)
        self.search_seconds = Histogram("swapline_search_seconds", "Search latency (embed + FAISS + chunk reads)",
                                        ["collection", "cache"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.load_seconds = Histogram("swapline_index_load_seconds", "Time to load and warm a new index version",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.swap_errors = Counter("swapline_index_load_errors", "Index versions that failed to load",
                                   registry=self.registry)

    def init_app(self, app: Flask, runtime) -> None:
        self.registry.register(RedisCollector(runtime))
        runtime.watcher.on_load = self._on_load
        app.before_request(self._start)
        app.after_request(self._finish)
        app.add_url_rule("/metrics", "metrics", self._expose)
        app.extensions["swapline_metrics"] = self

    def _on_load(self, seconds: float | None) -> None:
        if seconds is None:
            self.swap_errors.inc()
        else:
            self.load_seconds.observe(seconds)

    @staticmethod
    def _start() -> None:
        g.swapline_started = time.perf_counter()

    def _finish(self, response):
        started = g.pop("swapline_started", None)
        if started is not None and request.url_rule is not None and request.url_rule.rule != "/metrics":
            elapsed = time.perf_counter() - started
            route = request.url_rule.rule
            self.request_seconds.labels(request.method, route, str(response.status_code)).observe(elapsed)
            if request.endpoint == "search.Search" and response.status_code == 200:
                self.search_seconds.labels(request.view_args.get("name", ""),
                                           response.headers.get("X-Cache", "miss")).observe(elapsed)
        return response

    def _expose(self):
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
