"""Search quality and latency of the three modes over the sample corpus, with the real model.

    .venv/bin/python -m tests.bench.search_modes [--sigs sig-node,sig-scheduling] [--repeats 5]

Chunks the sample KEPs exactly as ingest does, embeds them with all-MiniLM-L6-v2 (cached under
test-artifacts/ by model and text, so a second run skips the minutes of embedding), writes and loads
one index version as a rebuild writes it (format 2: one part holding FAISS, BM25 postings and the
Arrow tables) and then, for each mode:

- hits@5 on the labelled queries of tests/data/search_queries.json, per kind (exact identifiers,
  paraphrases): a query is a hit when one of the top 5 chunks belongs to a relevant KEP;
- search latency p50/p99 in-process, query embedding included (as the API does it, one torch thread);
- the size of the keyword postings beside the FAISS file and the chunk records.

Prints a table and writes test-artifacts/bench_search.json. tests/test_search_quality.py runs the same
evaluation on part of the corpus and asserts hybrid beats vector on identifiers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np

from shared.index.embedders import MiniLMEmbedder, make_embedder
from shared.index.keywordpart import KEYWORD_PART_FILES
from shared.index.parts import PARTS_DIR, PartsVersion, open_version, verify_version
from shared.index.parttables import RECORDS_FILE
from shared.index.vectorindex import INDEX_FILE, build_flat
from shared.jobs.ingest import chunk_documents
from shared.search.engine import MODES, search
from shared.settings import Settings
from tests.support import write_part_version
from webapp.api.runtime import FAISS_THREADS
from webapp.devstack.sample import sample_documents

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ROOT / "tests" / "data" / "search_queries.json"
ARTIFACTS = ROOT / "test-artifacts"
KINDS = ("identifier", "paraphrase")


def load_queries(sigs: set[str] | None = None) -> list[dict]:
    """The labelled queries; with `sigs`, those whose relevant KEPs are all in those SIGs."""
    queries = json.loads(QUERIES.read_text())["queries"]
    for q in queries:
        q["relevant_ids"] = {f"keps/{r}/README.md" for r in q["relevant"]}
    if sigs:
        queries = [q for q in queries if all(r.split("/")[0] in sigs for r in q["relevant"])]
    return queries


def corpus_records(sigs: set[str] | None = None) -> tuple[list[dict], list[str]]:
    """Chunk records and the text embedded for each, produced by ingest's own chunking."""
    docs = [d for d in sample_documents() if not sigs or d["metadata"]["sig"] in sigs]
    # Chunk caps are counted with the model's own tokenizer, as ingest does (no weights loaded for that).
    settings = Settings()
    records, texts, _ = chunk_documents(SimpleNamespace(settings=settings, embedder=make_embedder(settings, 1)), docs)
    for rec in records:
        rec.pop("hash", None)
    return records, texts


def embed_cached(embedder, texts: list[str], cache_dir: Path = ARTIFACTS / "bench-search-cache") -> np.ndarray:
    digest = hashlib.sha256(embedder.model_id.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    path = cache_dir / f"{digest.hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path)
    # Longest first, as ingest does: batches pad little.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    vectors = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(order), 256):
        rows = order[start:start + 256]
        vectors[rows] = embedder.embed([texts[i] for i in rows])
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def build_version(directory: Path, records: list[dict], vectors: np.ndarray, model_id: str) -> PartsVersion:
    """Version 1 of `records` under `directory` (a collection's indexes folder: v1 over parts/p1),
    written, verified and opened as the product does, warmed."""
    written = write_part_version(directory, 1, build_flat(vectors, 4096, lambda done: None), records,
                                        {"kind": "flat-ip", "model": model_id})
    verify_version(written)
    version = open_version(written, 1)
    assert isinstance(version, PartsVersion)
    version.warm()
    return version


def hits_at_5(version: PartsVersion, queries: list[dict], embed: Callable[[str], np.ndarray]) -> dict:
    """mode -> kind -> fraction of queries with a relevant KEP in the top 5; and the misses."""
    vectors = {q["query"]: embed(q["query"]) for q in queries}
    table: dict = {}
    for mode in MODES:
        per_kind: dict[str, list[bool]] = {kind: [] for kind in KINDS}
        misses = []
        for q in queries:
            answer = search(version, q["query"], 5, mode, None, lambda text: vectors[text])
            hit = any(h["doc_id"] in q["relevant_ids"] for h in answer.hits)
            per_kind[q["kind"]].append(hit)
            if not hit:
                misses.append(q["query"])
        table[mode] = {kind: {"hits": sum(v), "queries": len(v)} for kind, v in per_kind.items()}
        table[mode]["misses"] = misses
    return table


def _percentiles(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
            "searches": len(ordered)}


def latency(version: PartsVersion, queries: list[dict], embed: Callable[[str], np.ndarray],
            repeats: int) -> dict:
    """mode -> p50/p99 milliseconds of one search at k=10: with its query embedding (what a request
    costs) and with the vector given (the index work alone, steadier on a shared machine)."""
    vectors = {q["query"]: embed(q["query"]) for q in queries}
    out = {}
    for mode in MODES:
        full, index_only = [], []
        for _ in range(repeats):
            for q in queries:
                started = time.perf_counter()
                search(version, q["query"], 10, mode, None, embed)
                full.append(time.perf_counter() - started)
                started = time.perf_counter()
                search(version, q["query"], 10, mode, None, lambda text: vectors[text])
                index_only.append(time.perf_counter() - started)
        out[mode] = {"with_embedding": _percentiles(full), "search_only": _percentiles(index_only)}
    return out


def sizes(directory: Path) -> dict:
    """Bytes of the files of the version's one part (written by `build_version` under `directory`)."""
    part = directory / PARTS_DIR / "p1"
    keyword = sum((part / name).stat().st_size for name in KEYWORD_PART_FILES)
    return {"faiss_bytes": (part / INDEX_FILE).stat().st_size, "keyword_bytes": keyword,
            "records_bytes": (part / RECORDS_FILE).stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigs", default="", help="only these SIGs (comma separated); default: the whole sample")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the queries for latency")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    faiss.omp_set_num_threads(FAISS_THREADS)  # as in an API process
    sigs = set(filter(None, args.sigs.split(","))) or None
    records, texts = corpus_records(sigs)
    queries = load_queries(sigs)
    print(f"corpus: {len(records)} chunks of {len({r['doc_id'] for r in records})} KEPs; {len(queries)} queries; "
          f"load {os.getloadavg()[0]:.2f}")
    started = time.perf_counter()
    vectors = embed_cached(MiniLMEmbedder(threads=2), texts)
    print(f"embedded (or read from cache) in {time.perf_counter() - started:.1f} s")
    query_embedder = MiniLMEmbedder(threads=1)  # what an API process uses
    embed = lambda text: query_embedder.embed([text])[0]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        version = build_version(Path(tmp), records, vectors, query_embedder.model_id)
        quality = hits_at_5(version, queries, embed)
        timing = latency(version, queries, embed, args.repeats)
        size = sizes(Path(tmp))
        del version  # its files are mapped: unmapped before the folder goes
    print(f"\nhits@5 ({len(queries)} labelled queries)")
    print(f"  {'mode':<8} " + " ".join(f"{kind:>14}" for kind in KINDS))
    for mode in MODES:
        cells = []
        for kind in KINDS:
            cell = quality[mode][kind]
            cells.append(f"{cell['hits']:>3}/{cell['queries']:<3} {cell['hits'] / max(1, cell['queries']):4.0%}")
        print(f"  {mode:<8} " + " ".join(f"{c:>14}" for c in cells))
    print(f"\nlatency per search at k=10 ({timing['vector']['search_only']['searches']} searches per mode)")
    print(f"  {'mode':<8} {'with query embedding':>28}   {'index work only':>26}")
    for mode in MODES:
        full, bare = timing[mode]["with_embedding"], timing[mode]["search_only"]
        print(f"  {mode:<8} p50 {full['p50_ms']:7.2f} ms p99 {full['p99_ms']:7.2f} ms   "
              f"p50 {bare['p50_ms']:6.2f} ms p99 {bare['p99_ms']:6.2f} ms")
    mib = {key: value / 2**20 for key, value in size.items()}
    print(f"\nsizes: index.faiss {mib['faiss_bytes']:.1f} MiB, kw_*.npy {mib['keyword_bytes']:.1f} MiB, "
          f"{RECORDS_FILE} {mib['records_bytes']:.1f} MiB; load {os.getloadavg()[0]:.2f}")
    for mode in MODES:
        print(f"  {mode} misses: {quality[mode]['misses']}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bench_search.json").write_text(json.dumps(
        {"chunks": len(records), "queries": len(queries), "hits_at_5": quality, "latency": timing, "sizes": size},
        indent=2))


if __name__ == "__main__":
    main()
