"""Search latency over HTTP against the floor under it, with the real model.

A real stack (redis-server, one celery worker, one gunicorn API process) indexes KEP files of the
sample corpus with all-MiniLM-L6-v2. Then distinct queries (and the result cache off, so no answer comes
from it) are searched over HTTP one at a time, on one keep-alive connection of a plain-socket client
(`LeanClient`: a client library's own work is not the service's, as wrk leaves it out; the same kind of
searches through the standard library's http.client, interleaved too, and through requests.Session are
reported beside), and the same queries in this process as query embedding
(the same model, one torch thread like the API) + FAISS search of the index version the API serves
(format 2: `nearest`, each part's FAISS index searched and the answers merged, no record read).
Target: HTTP p50 <= 1.3x in-process p50. The ratio compares like with like: HTTP searches in `vector`
mode (embed + FAISS, then the hits' records read and serialized); the default `hybrid` mode also runs
BM25 over a deeper candidate list and fuses, and is reported beside it.
"""

from __future__ import annotations

import time

import requests

from shared.settings import Settings
from tests.bench.common import (
    LeanClient,
    StdlibClient,
    api_query_embedder,
    corpus_documents,
    ms,
    pct,
    rebuild,
    row,
    server_timing,
    stack,
    submit,
    wait_all,
    wait_served,
)

COLLECTION = "latency"


def _queries(n: int) -> list[str]:
    """Distinct question-like queries built from KEP vocabulary (every string is new to the cache)."""
    topics = ["pod scheduling", "volume snapshots", "node shutdown", "api priority", "dual-stack networking",
              "kubelet credential providers", "cron jobs", "topology aware routing", "sidecar containers",
              "storage capacity tracking", "graceful termination", "resource quotas", "seccomp profiles",
              "indexed jobs", "service internal traffic", "csi migration", "memory manager", "cpu manager"]
    verbs = ["how does", "why is", "when should I use", "what changed in", "limits of"]
    return [f"{verbs[i % len(verbs)]} {topics[i % len(topics)]} ({i})" for i in range(n)]


def _http_latencies(base: str, queries: list[str], mode: str, client: LeanClient | None = None,
                    timings: list[dict] | None = None) -> list[float]:
    """Seconds of each search over HTTP; each answer's Server-Timing (seconds by name) into `timings`."""
    client = client or LeanClient(base)
    out = []
    for q in queries:
        started = time.perf_counter()
        resp = client.post(f"/v1/collections/{COLLECTION}/search", {"query": q, "k": 10, "mode": mode})
        out.append(time.perf_counter() - started)
        if resp.status_code != 200:
            raise RuntimeError(f"search failed: {resp.status_code} {resp.text[:200]}")
        if timings is not None:
            timings.append(server_timing(resp))
    return out


def _http_floor(base: str, n: int) -> list[float]:
    """GET /healthz round trips: what gunicorn, Flask and the HTTP client cost with no work behind them."""
    client = LeanClient(base)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        status = client.get("/healthz").status_code
        out.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}")
    return out


def _requests_latencies(base: str, queries: list[str]) -> list[float]:
    """Seconds of each search (vector mode) through requests.Session: the same searches with a client
    library's own work included."""
    session = requests.Session()
    out = []
    for q in queries:
        started = time.perf_counter()
        session.post(f"{base}/v1/collections/{COLLECTION}/search", json={"query": q, "k": 10, "mode": "vector"},
                     timeout=60).raise_for_status()
        out.append(time.perf_counter() - started)
    return out


def _inprocess_search(settings: Settings, version: int, embedder):
    """One search as the API runs it, minus HTTP: query embedding (`embedder`, the API's runtime) + FAISS
    over the served version."""
    import faiss

    from shared.index.parts import open_version
    from shared.storage import Storage
    from webapp.api.runtime import FAISS_THREADS

    # FAISS's threads as an API process sets them: with the default (one per core) the idle team spun
    # after each search here and took a core from the API's next request.
    faiss.omp_set_num_threads(FAISS_THREADS)
    loaded = open_version(Storage(settings.data_dir).version_dir(COLLECTION, version), version)
    loaded.warm()
    embedder.embed(["warm"])

    def search(q: str) -> tuple[float, float]:
        """(seconds in all, of which embedding)."""
        started = time.perf_counter()
        vector = embedder.embed([q])[0]
        embedded = time.perf_counter()
        loaded.nearest(vector, 10)
        return time.perf_counter() - started, embedded - started

    return search


def _interleaved(base: str, local, queries: list[str], stdlib_queries: list[str]
                 ) -> tuple[list[float], list[float], list[dict], list[float], list[float]]:
    """Each query over HTTP (vector mode) then in this process, then another over HTTP through http.client
    and in this process, one after the other: a burst of load from elsewhere falls on every side alike,
    and each HTTP search follows an in-process one. (HTTP seconds, in-process seconds, the API's
    Server-Timing of each lean HTTP search, in-process embedding seconds, http.client's seconds.)"""
    http, inproc, timings, embeds, stdlib = [], [], [], [], []
    lean, through_stdlib = LeanClient(base), StdlibClient(base)
    for pair in zip(queries, stdlib_queries, strict=True):
        for q, client, into, seen in zip(pair, (lean, through_stdlib), (http, stdlib), (timings, None), strict=True):
            into += _http_latencies(base, [q], "vector", client, seen)
            total, embed = local(q)
            inproc.append(total)
            embeds.append(embed)
    return http, inproc, timings, embeds, stdlib


def run(quick: bool) -> list[dict]:
    files, n_queries = (12, 100) if quick else (40, 300)
    settings = Settings(embedder="minilm", search_cache_size=0)
    with stack(settings) as running:
        base = running.base
        requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, timeout=30).raise_for_status()
        started = time.perf_counter()
        wait_all(base, [submit(base, COLLECTION, corpus_documents(files))["id"]], timeout=900)
        ingest_s = time.perf_counter() - started
        job = rebuild(base, COLLECTION, timeout=300)
        version, vectors = job["result"]["version"], job["result"]["vectors"]
        wait_served(base, COLLECTION, version)
        queries = _queries(4 * n_queries + 10)
        _http_latencies(base, queries[:10], "vector")  # warm the process (model load, connections)
        embedder = api_query_embedder(base, running.settings)
        search = _inprocess_search(running.settings, version, embedder)
        http, local, timings, local_embeds, stdlib = _interleaved(base, search, queries[10:n_queries + 10],
                                                                  queries[3 * n_queries + 10:])
        hybrid = _http_latencies(base, queries[n_queries + 10:2 * n_queries + 10], "hybrid")
        through_requests = _requests_latencies(base, queries[2 * n_queries + 10:3 * n_queries + 10])
        floor = _http_floor(base, n_queries)
    note = (f"{vectors} chunks of {files} KEP files, all-MiniLM-L6-v2 ({settings.embedder}: queries on "
            f"{embedder.model_id.rsplit('/', 1)[-1]}, 1 thread), "
            f"{n_queries} distinct queries, HTTP (one keep-alive connection, a plain-socket client) and "
            f"in-process interleaved, result cache off; ingest took "
            f"{ingest_s:.0f} s")
    return [
        row("latency.http_p50", "search over HTTP p50, vector mode (real model)", ms(pct(http, .5)), "ms", note=note),
        row("latency.http_p99", "search over HTTP p99, vector mode (real model)", ms(pct(http, .99)), "ms", note=note),
        row("latency.http_hybrid_p50", "search over HTTP p50, hybrid mode (the default)", ms(pct(hybrid, .5)), "ms",
            note=note),
        row("latency.inprocess_p50", "in-process embed + FAISS (nearest) p50", ms(pct(local, .5)), "ms", note=note),
        row("latency.inprocess_p99", "in-process embed + FAISS (nearest) p99", ms(pct(local, .99)), "ms", note=note),
        row("latency.api_embed_p50", "the API's own query embedding p50 (its Server-Timing `embed`)",
            ms(pct([t["embed"] for t in timings], .5)), "ms", note=note),
        row("latency.api_search_p50", "the API's search and answer shaping p50 (its Server-Timing `search`)",
            ms(pct([t["search"] for t in timings], .5)), "ms", note=note),
        row("latency.http_outside_handler_p50", "HTTP time outside the search handler's timed work p50 "
            "(each request's seconds less its Server-Timing embed + search)",
            ms(pct([h - t["embed"] - t["search"] for h, t in zip(http, timings, strict=True)], .5)), "ms", note=note),
        row("latency.api_app_p50", "the API application's whole request p50 (its Server-Timing `app`: hooks, route, "
            "serialization)", ms(pct([t["app"] for t in timings], .5)), "ms", note=note),
        row("latency.api_app_outside_handler_p50", "the application's work outside embed + search p50 (Server-Timing "
            "`app` less `embed` and `search`: checks, body parsing, headers, serialization)",
            ms(pct([t["app"] - t["embed"] - t["search"] for t in timings], .5)), "ms", note=note),
        row("latency.http_outside_app_p50", "HTTP server, loopback and client p50 (each request's seconds less its "
            "Server-Timing `app`)", ms(pct([h - t["app"] for h, t in zip(http, timings, strict=True)], .5)), "ms",
            note=note),
        row("latency.inprocess_embed_p50", "in-process query embedding p50 (of the in-process search)",
            ms(pct(local_embeds, .5)), "ms", note=note),
        row("latency.http_floor_p50", "HTTP round trip of GET /healthz p50 (no work)", ms(pct(floor, .5)), "ms",
            note="gunicorn + Flask + a plain-socket client on loopback"),
        row("latency.http_stdlib_p50", "search over HTTP p50 through http.client (the standard library's request "
            "building and header parsing included)", ms(pct(stdlib, .5)), "ms",
            note=note + f"; interleaved too, {n_queries} other queries"),
        row("latency.http_stdlib_over_inprocess_p50", "search p50, HTTP through http.client / in-process",
            pct(stdlib, .5) / pct(local, .5), "x", note=note + f"; interleaved too, {n_queries} other queries"),
        row("latency.http_requests_p50", "search over HTTP p50 through requests.Session (a client library's "
            "own work included)", ms(pct(through_requests, .5)), "ms", note=note + "; not interleaved"),
        row("latency.http_over_inprocess_p50", "search p50, HTTP (vector mode) / in-process",
            pct(http, .5) / pct(local, .5), "x", ("<=", 1.3), note=note),
    ]
