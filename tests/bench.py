"""`make bench`: Swapline's paths measured against the raw parts in the same run.

1. Embedding: the ingest path (chunk records -> embed_records, progress writes included) against
   SentenceTransformer.encode on the same chunk texts.
2. Search: a published version (LoadedVersion.search: FAISS + chunk-record reads) and the API's search
   view (Flask, embedding, serialization) against raw IndexFlatIP.search on the same vectors.
3. Hot swap, on real processes (redis-server, celery worker, two gunicorn API processes): time from
   publish to each API process serving the new version, and search latency during a rebuild against
   idle. Uses the hashing embedder so the numbers isolate the index path.

Sizes come from the environment (BENCH_CHUNKS, BENCH_VECTORS, BENCH_DOCS); defaults fit 2 cores.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from shared import keys

ROOT = Path(__file__).resolve().parent.parent


def _corpus_texts(limit_files: int = 60) -> list[dict]:
    for folder in (ROOT.parent / "shared" / "corpora" / "kubernetes-enhancements" / "keps",
                   ROOT / "webapp" / "sample_corpus"):
        files = sorted(folder.rglob("*.md"))[:limit_files] if folder.is_dir() else []
        if files:
            return [{"id": str(p.relative_to(folder)), "text": p.read_text(errors="replace")} for p in files]
    raise SystemExit("no markdown corpus found for the embedding benchmark")


def _pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(label, ours, raw, unit):
    print(f"  {label:<44} ours {ours:9.3f} {unit:<8} raw {raw:9.3f} {unit:<8} ratio {ours / raw:6.2f}x")


def bench_embedding(services, n_chunks: int) -> None:
    from sentence_transformers import SentenceTransformer

    from shared.jobs.ingest import chunk_documents, embed_records

    records, texts, _ = chunk_documents(services, _corpus_texts())
    records, texts = records[:n_chunks], texts[:n_chunks]
    embedder = services.embedder
    embedder.embed(["warm"])
    raw_model: SentenceTransformer = embedder._model  # the same loaded weights, called directly
    ours, raw = [], []
    for _ in range(2):  # alternate the two, best of two each, so drift on a noisy machine hits both alike
        job = services.jobs.create("ingest", "bench", {})
        services.jobs.start(job["id"])
        started = time.perf_counter()
        embed_records(services, job["id"], records, texts, {})
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        raw_model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        raw.append(time.perf_counter() - started)
    ours, raw = min(ours), min(raw)
    print(f"embedding {len(texts)} KEP chunks with all-MiniLM-L6-v2 ({embedder.threads} torch threads):")
    _row("chunks/s (ingest path vs model.encode)", len(texts) / ours, len(texts) / raw, "chunks/s")


def bench_search(n_vectors: int, queries: int = 300) -> None:
    import faiss

    from shared.index.vectorindex import LoadedVersion, build_flat, write_version

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((n_vectors, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    qs = vectors[rng.integers(0, n_vectors, queries)] + 0.01
    raw_index = faiss.IndexFlatIP(384)
    raw_index.add(vectors)
    raw_times = []
    for q in qs:
        t = time.perf_counter()
        raw_index.search(q.reshape(1, -1), 10)
        raw_times.append(time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        records = [{"doc_id": f"d{i}", "chunk_id": f"d{i}#0", "text": f"chunk {i}", "heading_path": [],
                    "metadata": {}} for i in range(n_vectors)]
        write_version(Path(tmp), build_flat(vectors, 65536, lambda done: None), records,
                      {"model": "bench", "kind": "flat-ip"})
        loaded = LoadedVersion(Path(tmp), 1)
        ours_times = []
        for q in qs:
            t = time.perf_counter()
            loaded.search(q, 10)
            ours_times.append(time.perf_counter() - t)
    print(f"search, exact inner product over {n_vectors} x 384 vectors, k=10, {queries} queries:")
    _row("p50 ms (LoadedVersion.search vs index.search)", 1000 * _pct(ours_times, .5), 1000 * _pct(raw_times, .5), "ms")
    _row("p95 ms", 1000 * _pct(ours_times, .95), 1000 * _pct(raw_times, .95), "ms")


def _hammer(base: str, seconds: float, threads: int = 2) -> list[float]:
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def run():
        session = requests.Session()
        while time.monotonic() < stop:
            t = time.perf_counter()
            resp = session.post(f"{base}/v1/collections/bench/search", json={"query": "topic 7 item", "k": 10})
            latencies.append(time.perf_counter() - t)
            if resp.status_code != 200:
                errors.append(resp.text[:200])

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise SystemExit(f"{len(errors)} searches failed during the benchmark: {errors[:3]}")
    return latencies


def bench_swap(n_docs: int) -> None:
    import redis

    from shared.settings import Settings
    from tests.support import start_api, start_redis_server, start_worker, wait_for, wait_job

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server, url, _ = start_redis_server(tmp)
        client = redis.Redis.from_url(url, decode_responses=True)
        settings = Settings(redis_url=url, data_dir=tmp / "data", embedder="hash", watcher_poll_seconds=2.0)
        procs = []
        try:
            api1, base1 = start_api(settings, tmp, name="api1")
            procs.append(api1)
            api2, base2 = start_api(settings, tmp, name="api2")
            procs.append(api2)
            procs.append(start_worker(settings, tmp))
            requests.post(f"{base1}/v1/collections", json={"name": "bench"})
            docs = [{"id": f"d{i}", "text": f"# Topic {i % 50}\nItem {i} of the benchmark corpus, word{i % 997}."}
                    for i in range(n_docs)]
            for start in range(0, n_docs, 1000):
                body = {"documents": docs[start:start + 1000], "rebuild": False}
                job = requests.post(f"{base1}/v1/collections/bench/documents", json=body).json()
                wait_job(base1, job["id"], 300)
            first = wait_job(base1, requests.post(f"{base1}/v1/collections/bench/rebuild").json()["id"], 600)
            for base in (base1, base2):
                wait_for(lambda b=base: requests.post(f"{b}/v1/collections/bench/search", json={"query": "x"})
                         .json()["index_version"] == first["result"]["version"], timeout=120)

            idle = _hammer(base1, 5.0)
            job = requests.post(f"{base1}/v1/collections/bench/rebuild").json()
            wait_for(lambda: requests.get(f"{base1}/v1/jobs/{job['id']}").json()["state"] == "running", timeout=60)
            during = []
            while requests.get(f"{base1}/v1/jobs/{job['id']}").json()["state"] == "running":
                during += _hammer(base1, 1.0)
            done = wait_job(base1, job["id"], 600)
            version = done["result"]["version"]
            wait_for(lambda: len([1 for _, f in client.xrange(keys.events())
                                  if f["type"] == "index.swapped" and f"\"version\": {version}" in f["data"]]) >= 2,
                     timeout=120)
            events = client.xrange(keys.events())
            published = next(int(i.split("-")[0]) for i, f in events
                             if f["type"] == "index.published" and f"\"version\": {version}" in f["data"])
            swapped = [int(i.split("-")[0]) - published for i, f in events
                       if f["type"] == "index.swapped" and f"\"version\": {version}" in f["data"]]
            print(f"hot swap on real processes ({n_docs} docs, 2 API processes, 1 worker, hashing embedder):")
            print(f"  rebuild timings (s): {done['result']['timings']}")
            poll = settings.watcher_poll_seconds
            print(f"  publish -> API process serving, ms: {sorted(swapped)} (watcher poll {poll}s,"
                  " pub/sub message first)")
            print(f"  search p50/p95 ms idle:           {1000 * _pct(idle, .5):7.2f} / {1000 * _pct(idle, .95):7.2f}"
                  f"  ({len(idle)} searches)")
            print(f"  search p50/p95 ms during rebuild: {1000 * _pct(during, .5):7.2f} / "
                  f"{1000 * _pct(during, .95):7.2f}"
                  f"  ({len(during)} searches, 0 failed)")
            print(f"  ratio during/idle p50: {statistics.median(during) / statistics.median(idle):.2f}x")
        finally:
            for proc in procs:
                proc.stop()
            server.terminate()
            server.wait(10)


def main() -> None:
    from shared.services import build_services
    from shared.settings import Settings

    n_chunks = int(os.environ.get("BENCH_CHUNKS", "256"))
    n_vectors = int(os.environ.get("BENCH_VECTORS", "100000"))
    n_docs = int(os.environ.get("BENCH_DOCS", "50000"))
    print(f"machine: {os.cpu_count()} cores; sizes: BENCH_CHUNKS={n_chunks} BENCH_VECTORS={n_vectors} "
          f"BENCH_DOCS={n_docs}")
    bench_search(n_vectors)
    bench_swap(n_docs)
    import fakeredis

    with tempfile.TemporaryDirectory() as tmp:
        # No embedding cache: the timed passes must embed every chunk, not find the first pass's vectors.
        services = build_services(Settings(data_dir=tmp, embedder="minilm", embed_cache_bytes=0),
                                  enqueue=lambda kind, job_id: None,
                                  torch_threads=2, client=fakeredis.FakeRedis(decode_responses=True))
        bench_embedding(services, n_chunks)


if __name__ == "__main__":
    main()
