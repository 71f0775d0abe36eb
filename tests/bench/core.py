"""Swapline's own paths against the raw parts they wrap, in one process.

1. Embedding: the ingest path (chunk records -> embed_records, progress writes included, with the
   default embedder) against the raw model, torch SentenceTransformer.encode, on the same chunk texts
   of the KEP corpus, with the worker's threads. Target: >= 2x (issue 12: beat the raw model).
2. Search: a published exact version (format 2, as a rebuild writes it: `nearest` over its part +
   chunk-record reads from its Arrow table) against raw IndexFlatIP.search on the same vectors.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from tests.bench.common import corpus_documents, ms, pct, row, search_records, written_version


def bench_embedding(services, n_chunks: int) -> list[dict]:
    from shared.jobs.ingest import chunk_documents, embed_records

    records, texts, _ = chunk_documents(services, corpus_documents(60))
    records, texts = records[:n_chunks], texts[:n_chunks]
    from shared.index.embedders import MiniLMEmbedder

    embedder = services.embedder
    embedder.embed(["warm"])
    raw_model = MiniLMEmbedder(threads=embedder.threads).loaded()  # torch, the packaged weights, called directly
    raw_model.encode(["warm"], normalize_embeddings=True, show_progress_bar=False)
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
    ours_rate, raw_rate = len(texts) / min(ours), len(texts) / min(raw)
    note = (f"{len(texts)} KEP chunks, ingest with {embedder.model_id} against torch encode, {embedder.threads} "
            "threads, best of 2")
    return [row("core.ingest_embed_rate", "ingest path embed rate (default embedder)", ours_rate, "chunks/s",
                note=note),
            row("core.raw_encode_rate", "raw model.encode rate (torch)", raw_rate, "chunks/s", note=note),
            row("core.ingest_embed_ratio", "ingest path / raw torch model.encode (throughput)", ours_rate / raw_rate,
                "x", (">=", 2.0), note=note)]


def bench_search(n_vectors: int, queries: int = 300) -> list[dict]:
    import faiss

    from shared.index.vectorindex import build_flat

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
        loaded = written_version(Path(tmp), build_flat(vectors, 65536, lambda done: None), records,
                                 {"model": "bench", "kind": "flat-ip"})
        loaded.warm()
        ours_times = []
        for q in qs:
            t = time.perf_counter()
            search_records(loaded, q, 10)
            ours_times.append(time.perf_counter() - t)
        del loaded  # its files are mapped: unmapped before the folder goes
    note = f"exact inner product, {n_vectors} x 384, k=10, {queries} queries, format-2 version (one part)"
    return [row("core.version_search_p50", "version search p50 (exact, nearest + records)", ms(pct(ours_times, .5)),
                "ms", note=note),
            row("core.version_search_ratio", "version search / raw IndexFlatIP p50",
                pct(ours_times, .5) / pct(raw_times, .5), "x", note=note)]


def run(quick: bool) -> list[dict]:
    import fakeredis

    from shared.services import build_services
    from shared.settings import Settings

    rows = bench_search(20_000 if quick else 100_000, 100 if quick else 300)
    with tempfile.TemporaryDirectory() as tmp:
        # No embedding cache: the timed passes must embed every chunk, not find the first pass's vectors.
        services = build_services(Settings(data_dir=tmp, embedder="minilm", embed_cache_bytes=0),
                                  enqueue=lambda kind, job_id: None,
                                  torch_threads=2, client=fakeredis.FakeRedis(decode_responses=True))
        rows += bench_embedding(services, 64 if quick else 256)
    return rows
