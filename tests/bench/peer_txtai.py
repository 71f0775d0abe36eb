"""The txtai side of the peer benchmark. Runs INSIDE the peer venv (var/bench-peer/venv), never in
Swapline's: it imports txtai, torch (only to set its threads), numpy and the standard library.

    python peer_txtai.py CORPUS.json MODEL_PATH THREADS INDEX_RUNS

CORPUS.json holds {"texts": [chunk texts], "queries": [distinct query strings]}. Prints one JSON object:

- index: `Embeddings.index` over every chunk (embed + SQLite content store + FAISS build), model loaded,
  the best of INDEX_RUNS builds (the machine is shared with other work);
- search: one `Embeddings.search` per distinct query, k=10, idle;
- app_reindex: txtai's `Application` (the object its HTTP API serves: every route calls it) rebuilt with
  `index()` while a thread searches through it; per-search latency and failures during the rebuild;
- raw_reindex: the same on a bare `Embeddings` (no Application lock), showing what that lock guards.

The index is `backend: faiss` with `IDMap,Flat` (exact inner product, as Swapline's flat index) and
`content: True`: Swapline's search answers chunk text with each hit, so txtai keeps the text too
(its SQLite store) and its search reads it back, the same work on both sides.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import threading
import time

K = 10
# A search client's pace during a rebuild: one search starts every 10 ms at most. Without it a bare
# Embeddings search that fails at once spins millions of times and starves the rebuild of the GIL.
SEARCH_EVERY = 0.01


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def config(model_path: str) -> dict:
    return {"path": model_path, "method": "sentence-transformers", "backend": "faiss",
            "faiss": {"components": "IDMap,Flat"}, "content": True, "encodebatch": 32, "gpu": False}


def time_searches(search, queries: list[str]) -> list[float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query, K)
        times.append(time.perf_counter() - started)
    return times


def search_while(build, search, queries: list[str]) -> dict:
    """Run `build()` in a thread and search in this one, query after query, until the build is over.
    A search counts as during the build when it started before the build ended; its latency runs to
    when it returned (a search blocked by a lock shows the wait)."""
    window, begun, ended = {}, threading.Event(), threading.Event()

    def run_build():
        window["start"] = time.perf_counter()
        begun.set()
        try:
            build()
        finally:
            window["end"] = time.perf_counter()
            ended.set()

    builder = threading.Thread(target=run_build)
    builder.start()
    begun.wait()
    searches = []
    i = 0
    while not ended.is_set():
        query = queries[i % len(queries)]
        i += 1
        started = time.perf_counter()
        try:
            hits, error = len(search(query, K) or []), None
        except Exception as exc:  # noqa: BLE001 - a failed search is what is being counted
            hits, error = 0, f"{type(exc).__name__}: {exc}"[:160]
        searches.append({"start": started, "seconds": time.perf_counter() - started, "hits": hits, "error": error})
        ended.wait(max(0.0, started + SEARCH_EVERY - time.perf_counter()))
    builder.join()
    during = [s for s in searches if s["start"] < window["end"]]
    errors = [s["error"] for s in during if s["error"]]
    return {
        "build_seconds": window["end"] - window["start"],
        "searches": len(during),
        "completed_inside_build": sum(1 for s in during if s["start"] + s["seconds"] < window["end"]),
        "failed": len(errors),
        "empty": sum(1 for s in during if not s["error"] and s["hits"] == 0),
        "errors": sorted(set(errors))[:3],
        "max_ms": 1000 * max(s["seconds"] for s in during),
        "p50_ms": 1000 * percentile([s["seconds"] for s in during], 0.5),
        "series": [[round(s["start"] - window["start"], 4), round(1000 * s["seconds"], 3), bool(s["error"])]
                   for s in searches],
    }


def main(corpus_path: str, model_path: str, threads: int, index_runs_wanted: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from txtai import Embeddings
    from txtai.app import Application

    torch.set_num_threads(threads)
    corpus = json.loads(open(corpus_path, encoding="utf-8").read())
    texts, queries = corpus["texts"], corpus["queries"]
    documents = [(str(i), text, None) for i, text in enumerate(texts)]

    embeddings = Embeddings(config(model_path))
    embeddings.transform("warm up the model")
    index_runs = []
    for _ in range(index_runs_wanted):
        started = time.perf_counter()
        embeddings.index(documents)
        index_runs.append(time.perf_counter() - started)
    time_searches(embeddings.search, ["warm one", "warm two", "warm three"])
    idle = time_searches(embeddings.search, queries)

    app = Application({"writable": True, "embeddings": config(model_path)})
    app.add([{"id": str(i), "text": t} for i, t in enumerate(texts)])
    started = time.perf_counter()
    app.index()
    app_index_seconds = time.perf_counter() - started
    app_idle = time_searches(lambda q, k: app.search(q, k), queries)

    def app_rebuild():
        app.add([{"id": str(i), "text": t} for i, t in enumerate(texts)])
        app.index()

    app_reindex = search_while(app_rebuild, lambda q, k: app.search(q, k), queries)
    raw_reindex = search_while(lambda: embeddings.index(documents), embeddings.search, queries)
    return {
        "txtai": importlib.metadata.version("txtai"),
        "torch": torch.__version__, "threads": threads, "torch_threads": torch.get_num_threads(),
        "chunks": len(texts), "queries": len(queries), "config": config(model_path),
        "index_seconds": min(index_runs), "index_runs": index_runs,
        "search": {"p50_ms": 1000 * percentile(idle, 0.5), "p99_ms": 1000 * percentile(idle, 0.99)},
        "app_index_seconds": app_index_seconds,
        "app_search": {"p50_ms": 1000 * percentile(app_idle, 0.5), "p99_ms": 1000 * percentile(app_idle, 0.99)},
        "app_reindex": app_reindex,
        "raw_reindex": raw_reindex,
    }


if __name__ == "__main__":
    corpus_arg, model_arg, threads_arg, runs_arg = sys.argv[1:5]
    print(json.dumps(main(corpus_arg, model_arg, int(threads_arg), int(runs_arg))))
