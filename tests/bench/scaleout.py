"""Scale-out: ingest throughput with one and two worker processes, and what each chunk and each search
costs Redis.

The same corpus (KEP files of the sample corpus, hashing embedder: embedding is cheap, so the numbers
show the pipeline around it: staging, chunking, segment writes, job and progress writes, Celery) is
ingested by a stack with 1 worker process and then by a fresh stack with 2. Redis commands come from
INFO commandstats deltas (CONFIG RESETSTAT before each phase), net of what the same stack runs while
idle for as long (Celery polls, heartbeats, the API's pointer polls).
"""

from __future__ import annotations

import time

import requests

from shared.settings import Settings
from tests.bench.common import (
    corpus_documents,
    rebuild,
    redis_commands,
    reset_commandstats,
    row,
    stack,
    submit,
    wait_all,
    wait_served,
)

COLLECTION = "scaleout"
FILES_PER_BATCH = 16  # like a source's child batches (SWAPLINE_SOURCE_BATCH_FILES)


def idle_rate(client, seconds: float) -> float:
    """Redis commands per second the stack runs with nothing to do."""
    reset_commandstats(client)
    time.sleep(seconds)
    return redis_commands(client) / seconds


def redis_capacity(url: str) -> float | None:
    """Simple commands/s the stack's Redis answers (redis-benchmark, 50 clients, no pipelining; the slowest
    of SET, GET, HSET, LPUSH, XADD), or None when redis-benchmark is not installed."""
    import csv
    import shutil
    import subprocess
    from urllib.parse import urlparse

    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    port = str(urlparse(url).port)
    out = subprocess.run([binary, "-p", port, "-q", "-n", "50000", "-t", "set,get,hset,lpush", "--csv"],
                         capture_output=True, text=True, timeout=300).stdout
    rates = [float(r[1]) for r in csv.reader(out.splitlines()) if len(r) > 1 and r[1].replace(".", "").isdigit()]
    return min(rates) if rates else None


def ingest_phase(workers: int, docs: list[dict], searches: int) -> dict:
    settings = Settings(embedder="hash", search_cache_size=0, embed_cache_bytes=0)
    with stack(settings, workers=workers) as running:
        base, client = running.base, running.redis
        requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, timeout=30).raise_for_status()
        idle = idle_rate(client, 5.0)
        reset_commandstats(client)
        started = time.perf_counter()
        ids = [submit(base, COLLECTION, docs[i:i + FILES_PER_BATCH])["id"]
               for i in range(0, len(docs), FILES_PER_BATCH)]
        jobs = wait_all(base, ids, timeout=1800)
        seconds = time.perf_counter() - started
        commands = redis_commands(client) - idle * seconds
        chunks = sum(job["result"]["chunks"] for job in jobs)
        out = {"seconds": seconds, "chunks": chunks, "per_chunk": commands / chunks, "idle": idle}
        if searches:
            job = rebuild(base, COLLECTION, timeout=600)
            wait_served(base, COLLECTION, job["result"]["version"])
            session = requests.Session()
            reset_commandstats(client)
            started = time.perf_counter()
            for i in range(searches):
                session.post(f"{base}/v1/collections/{COLLECTION}/search",
                             json={"query": f"graceful node shutdown {i}", "k": 10}, timeout=30).raise_for_status()
            seconds = time.perf_counter() - started
            out["per_search"] = (redis_commands(client) - idle * seconds) / searches
            out["capacity"] = redis_capacity(running.settings.redis_url)
    return out


def run(quick: bool) -> list[dict]:
    docs = corpus_documents(80 if quick else 296)
    one = ingest_phase(1, docs, searches=200)
    two = ingest_phase(2, docs, searches=0)
    note = f"{len(docs)} KEP files, {one['chunks']} chunks, batches of {FILES_PER_BATCH} files, hashing embedder"
    rate1, rate2 = one["chunks"] / one["seconds"], two["chunks"] / two["seconds"]
    return [
        row("scaleout.ingest_1_worker", "ingest throughput, 1 worker process", rate1, "chunks/s", note=note),
        row("scaleout.ingest_2_workers", "ingest throughput, 2 worker processes", rate2, "chunks/s", note=note),
        row("scaleout.two_over_one", "ingest throughput, 2 workers / 1 worker", rate2 / rate1, "x",
            note="2 cores shared by API, Redis and both workers"),
        row("scaleout.redis_commands_per_chunk", "Redis commands per ingested chunk", one["per_chunk"], "count",
            note=f"1 worker; net of {one['idle']:.0f} idle commands/s"),
        row("scaleout.redis_commands_per_search", "Redis commands per search", one["per_search"], "count",
            note="200 HTTP searches, net of idle"),
        row("scaleout.redis_capacity", "Redis simple commands/s here (redis-benchmark)", one.get("capacity"), "ops/s",
            note="slowest of SET, GET, HSET, LPUSH; 50 clients, no pipelining"),
    ]
