"""The ONNX Runtime embedder against torch, on the sample corpus:

    .venv/bin/python -m tests.bench.embed [--quick]

- cosine of each ONNX variant's vectors to sentence-transformers' (torch) on every corpus chunk;
- hits@5 of vector and hybrid search on the labelled queries of tests/data/search_queries.json (documents
  and queries embedded by the same runtime), and of each variant's queries over a torch-built index (a
  version built before the default changed, or ingest and queries calibrated to different runtimes);
- worker throughput: chunks/s embedding the same chunks as ingest does (longest first, in groups of
  4 x SWAPLINE_EMBED_BATCH_SIZE) with the worker's thread count, torch `encode` vs each variant; best
  of a few alternating passes, since the machine is shared;
- one query embedded with the API's thread count: p50/p99 over the labelled queries.

--quick uses three SIGs of the sample (about 1,800 chunks) and fewer passes. Corpus vectors are cached
under test-artifacts/ by model id and texts (as tests/bench/search_modes.py does), ONNX exports under
test-artifacts/bench-models/.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from shared.index.embedders import MiniLMEmbedder
from shared.index.onnxembed import VARIANTS, OnnxMiniLMEmbedder
from shared.settings import Settings
from tests.bench.search_modes import ARTIFACTS, build_version, corpus_records, embed_cached, hits_at_5, load_queries

QUICK_SIGS = {"sig-scheduling", "sig-storage", "sig-instrumentation"}
MODELS_DIR = ARTIFACTS / "bench-models"


def _row(name: str, label: str, value: float, unit: str, note: str, target: dict | None = None) -> dict:
    return {"name": f"embed.{name}", "label": label, "value": value, "unit": unit, "target": target, "note": note}


def _embedders(threads: int) -> dict:
    """runtime name -> embedder, torch first."""
    out = {"torch": MiniLMEmbedder(threads=threads)}
    for variant in VARIANTS:
        out[variant] = OnnxMiniLMEmbedder(MODELS_DIR, variant, threads=threads)
    return out


def _as_worker(embedder, texts: list[str], group: int) -> float:
    """Seconds to embed `texts` the way ingest calls the embedder."""
    ordered = sorted(texts, key=len, reverse=True)
    started = time.perf_counter()
    for start in range(0, len(ordered), group):
        embedder.embed(ordered[start:start + group])
    return time.perf_counter() - started


def throughput(texts: list[str], threads: int, group: int, passes: int) -> dict[str, float]:
    """runtime -> chunks/s, the best of `passes` alternating passes (a busy neighbour only slows)."""
    embedders = _embedders(threads)
    for embedder in embedders.values():
        embedder.embed(texts[:8])  # load and warm outside the clock
    best = {name: float("inf") for name in embedders}
    for _ in range(passes):
        for name, embedder in embedders.items():
            best[name] = min(best[name], _as_worker(embedder, texts, group))
    return {name: len(texts) / seconds for name, seconds in best.items()}


def query_latency(queries: list[str], threads: int, repeats: int) -> dict[str, tuple[float, float]]:
    """runtime -> (p50, p99) milliseconds to embed one query."""
    out = {}
    for name, embedder in _embedders(threads).items():
        embedder.embed(["warm up"])
        times = []
        for _ in range(repeats):
            for query in queries:
                started = time.perf_counter()
                embedder.embed([query])
                times.append(1000 * (time.perf_counter() - started))
        out[name] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
    return out


def quality(records: list[dict], texts: list[str], queries: list[dict], worker_threads: int,
            api_threads: int) -> tuple[dict, dict, dict]:
    """Corpus vectors per runtime, hits@5 tables per runtime, and per ONNX variant the table of its queries
    over the torch-built index (an index built by one runtime searched with another's queries, as when
    calibration chooses different runtimes for ingest and queries)."""
    vectors = {name: embed_cached(embedder, texts) for name, embedder in _embedders(worker_threads).items()}
    query_embedders = _embedders(api_threads)
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, embedder in query_embedders.items():
            folder = Path(tmp) / name
            folder.mkdir()
            version = build_version(folder, records, vectors[name], embedder.model_id)
            tables[name] = hits_at_5(version, queries, lambda text, e=embedder: e.embed([text])[0])
            if name == "torch":
                torch_version = version
        cross = {variant: hits_at_5(torch_version, queries, lambda text, e=query_embedders[variant]: e.embed([text])[0])
                 for variant in VARIANTS}
    return vectors, tables, cross


def _fraction(table: dict, mode: str) -> float:
    hits = sum(table[mode][kind]["hits"] for kind in ("identifier", "paraphrase"))
    total = sum(table[mode][kind]["queries"] for kind in ("identifier", "paraphrase"))
    return round(hits / max(1, total), 4)


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings()
    worker, api = settings.worker_torch_threads, settings.api_torch_threads
    sigs = QUICK_SIGS if quick else None
    records, texts = corpus_records(sigs)
    queries = load_queries(sigs)
    corpus = f"{len(texts)} chunks{' of 3 SIGs' if quick else ''}"
    vectors, tables, cross = quality(records, texts, queries, worker, api)

    rows = []
    for variant in VARIANTS:
        cosine = (vectors[variant] * vectors["torch"]).sum(axis=1)
        rows.append(_row(f"cosine_min.{variant}", f"cosine to torch, min, ONNX {variant}",
                         round(float(cosine.min()), 5), "fraction", corpus))
        rows.append(_row(f"cosine_mean.{variant}", f"cosine to torch, mean, ONNX {variant}",
                         round(float(cosine.mean()), 5), "fraction", corpus))
    torch_hits = _fraction(tables["torch"], "vector")
    torch_hybrid = _fraction(tables["torch"], "hybrid")
    for name in ("torch", *VARIANTS):
        runtime = "torch" if name == "torch" else f"ONNX {name}"
        target = None if name == "torch" else {"op": ">=", "value": round(torch_hits - 0.01, 4)}
        rows.append(_row(f"hits_at_5.{name}", f"vector search hits@5, {runtime}", _fraction(tables[name], "vector"),
                         "fraction", f"{len(queries)} labelled queries, {corpus}; target: torch - 1 point", target))
        hybrid_target = None if name == "torch" else {"op": ">=", "value": round(torch_hybrid - 0.01, 4)}
        rows.append(_row(f"hybrid_hits_at_5.{name}", f"hybrid search hits@5, {runtime}",
                         _fraction(tables[name], "hybrid"), "fraction",
                         f"{len(queries)} labelled queries, {corpus}; the default search mode", hybrid_target))
    for variant in VARIANTS:
        rows.append(_row(f"hits_at_5.{variant}_queries_torch_index",
                         f"vector hits@5, ONNX {variant} queries on a torch-built index",
                         _fraction(cross[variant], "vector"), "fraction",
                         "an index built by one runtime, queries embedded by another",
                         {"op": ">=", "value": round(torch_hits - 0.01, 4)}))

    sample = random.Random(12).sample(texts, min(len(texts), 256 if quick else 1024))
    rates = throughput(sample, worker, settings.embed_batch_size * 4, passes=1 if quick else 3)
    for variant in VARIANTS:
        rows.append(_row(f"worker_throughput_ratio.{variant}",
                         f"worker embed throughput, ONNX {variant} / torch encode",
                         round(rates[variant] / rates["torch"], 2), "x",
                         f"{rates[variant]:.0f} vs {rates['torch']:.0f} chunks/s, {len(sample)} chunks, "
                         f"{worker} threads", {"op": ">=", "value": 2.0}))

    latency = query_latency([q["query"] for q in queries], api, repeats=3 if quick else 10)
    for name, (p50, p99) in latency.items():
        runtime = "torch" if name == "torch" else f"ONNX {name}"
        note = f"{len(queries)} queries x {3 if quick else 10}, {api} thread"
        rows.append(_row(f"query_p50.{name}", f"one query embedded, p50, {runtime}", round(p50, 2), "ms", note,
                         None if name == "torch" else {"op": "<=", "value": 8.0}))
        rows.append(_row(f"query_p99.{name}", f"one query embedded, p99, {runtime}", round(p99, 2), "ms", note))
    return rows


def _meets(row: dict) -> str:
    target = row["target"]
    if target is None:
        return ""
    ok = row["value"] >= target["value"] if target["op"] == ">=" else row["value"] <= target["value"]
    return f"{target['op']} {target['value']} {'ok' if ok else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three SIGs, fewer passes")
    args = parser.parse_args()
    started = time.monotonic()
    rows = run(args.quick)
    for row in rows:
        print(f"{row['name']:<42} {row['value']:>9} {row['unit']:<8} {_meets(row):<22} {row['note']}")
    print(f"({time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
