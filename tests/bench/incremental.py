"""Incremental IVF build against a full build, in-process, on clustered synthetic vectors.

A collection of N x 384 unit vectors drawn around 4096 random unit centres (1024 with --quick), so
that recall means something. The full build is what a rebuild does for an IVF index: k-means, assign,
add, tune nprobe. The incremental build is what a rebuild does from the published version: read its
index from disk into memory (checksum while reading), drop 0.1% of the rows (deleted documents),
assign +1% new rows to the reused quantizer, check the retrain rules, add them, tune nprobe. nprobe is
tuned on 200 held-out queries from the same clusters. The version write that follows either build
(index file, chunk store, keyword index, documents table, checksums, fsync, verify: the same O(rows)
work for both) is measured on its own, with short synthetic chunk texts, and added to both for the
end-to-end ratio.

    python -m tests.bench.incremental [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from shared.index import ivf
from shared.index.vectorindex import (
    INDEX_FILE,
    read_index_copy,
    sha256_file,
    train_ivf,
    training_rows,
    verify_version,
    write_version,
)
from shared.storage import fsync_tree

DIM = 384
TARGET_RATIO = 0.10
RECALL_TARGET = 0.95
MOST_NPROBE = 256


class PeakRss:
    """The highest resident memory of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> PeakRss:
        self.peak = self.baseline = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(n: int, centres: np.ndarray, seed: int, spread: float = 0.06, block: int = 100_000) -> np.ndarray:
    """`n` unit vectors, each a random centre plus Gaussian noise (norm about spread * sqrt(DIM)). At
    0.06 two rows of one cluster have a cosine of about 0.42, well above the best of a million chance
    pairs across clusters (about 0.25); at 0.1 (about 0.2) chance pairs win, the nearest neighbours
    are noise, and no nprobe below a full scan reaches 0.9 at 1M rows (measured: 0.8985 at 256)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, block):
        size = min(block, n - start)
        v = centres[rng.integers(0, len(centres), size)] + spread * rng.standard_normal((size, DIM), dtype=np.float32)
        out[start:start + size] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _full_build(vectors: np.ndarray, queries: np.ndarray) -> tuple[faiss.Index, dict, dict]:
    index = train_ivf(vectors)
    top, lists = ivf.assign(index.quantizer, vectors)
    ivf.add_assigned(index, vectors, lists, 65536, lambda done: None)
    training = ivf.training_record(top, lists, training_rows(len(vectors), index.nlist), index.nlist, version=1)
    return index, training, ivf.tune_nprobe(index, RECALL_TARGET, MOST_NPROBE, queries=queries)


def _incremental_build(directory: Path, manifest: dict, keep: np.ndarray, added: np.ndarray, training: dict,
                       queries: np.ndarray) -> tuple[faiss.Index, dict, dict]:
    laps, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        laps[name] = round(now - clock, 3)
        clock = now

    index = read_index_copy(directory, manifest)
    lap("read")
    top, lists = ivf.assign(faiss.extract_index_ivf(index).quantizer, added)
    training = ivf.after_assigning(training, top)
    ivf.drop_and_renumber(index, keep)
    sizes = ivf.list_sizes(index) + np.bincount(lists, minlength=faiss.extract_index_ivf(index).nlist)
    reason = ivf.retrain_reason(training, int(keep.sum()) + len(added), sizes)
    if reason is not None:
        raise RuntimeError(f"the benchmark's new rows should not need a retrain: {reason}")
    lap("drop")
    ivf.add_assigned(index, added, lists, 65536, lambda done: None)
    lap("add")
    tuned = ivf.tune_nprobe(index, RECALL_TARGET, MOST_NPROBE, queries=queries)
    lap("tune")
    return index, tuned, laps


def _write_seconds(index: faiss.Index, directory: Path) -> float:
    """A version write of `index` as a rebuild does it, with one short synthetic record per row."""
    records = [{"doc_id": f"doc{i // 4}", "chunk_id": f"doc{i // 4}#{i % 4}", "text": f"synthetic chunk {i} words",
                "heading_path": [], "metadata": {}, "updated_at": 0.0} for i in range(index.ntotal)]
    started = time.perf_counter()
    write_version(directory, index, records, {"kind": "ivf-flat-ip", "model": "bench", "version": 2,
                                              "nprobe": faiss.extract_index_ivf(index).nprobe})
    fsync_tree(directory)
    verify_version(directory)
    return time.perf_counter() - started


def run(quick: bool) -> list[dict]:
    n = 100_000 if quick else 1_000_000
    clusters = 1024 if quick else 4096
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(n, centres, seed=1)
    queries = clustered(200, centres, seed=2)  # held out: never added to any index
    added = clustered(n // 100, centres, seed=3)
    keep = np.random.default_rng(4).random(n) >= 0.001

    with PeakRss() as full_memory:
        started = time.perf_counter()
        index, training, full_tuned = _full_build(vectors, queries)
        full_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="swapline-bench-") as tmp:
        directory = Path(tmp)
        faiss.write_index(index, str(directory / INDEX_FILE))
        manifest = {"checksum": sha256_file(directory / INDEX_FILE)}
        index_mib = os.path.getsize(directory / INDEX_FILE) / 2**20
        nlist = index.nlist
        del index, vectors
        with PeakRss() as inc_memory:
            started = time.perf_counter()
            copy, inc_tuned, laps = _incremental_build(directory, manifest, keep, added, training, queries)
            inc_seconds = time.perf_counter() - started
        rows = int(copy.ntotal)
        version = directory / "v2"
        version.mkdir()
        write_seconds = _write_seconds(copy, version)
    end_to_end = (inc_seconds + write_seconds) / (full_seconds + write_seconds)
    size = f"{n:,} x {DIM}, {clusters} clusters, nlist {nlist}"
    change = f"+{len(added):,} rows, -{int((~keep).sum()):,} rows"
    return [
        {"name": "incremental.full_build_seconds", "label": "full IVF build (train, add, tune nprobe)",
         "value": round(full_seconds, 2), "unit": "s", "target": None,
         "note": f"{size}; nprobe {full_tuned['nprobe']}, recall@10 {full_tuned['recall_at_10']}"},
        {"name": "incremental.incremental_build_seconds", "label": "incremental IVF build (+1%)",
         "value": round(inc_seconds, 2), "unit": "s", "target": None,
         "note": f"{change} -> {rows:,}; {json.dumps(laps)}; nprobe {inc_tuned['nprobe']}, "
                 f"recall@10 {inc_tuned['recall_at_10']}"},
        {"name": "incremental.build_ratio", "label": "incremental build / full build, adding 1%",
         "value": round(inc_seconds / full_seconds, 4), "unit": "fraction",
         "target": {"op": "<=", "value": TARGET_RATIO}, "note": f"{size}; index work only (version write excluded)"},
        {"name": "incremental.version_write_seconds", "label": "version write after either build",
         "value": round(write_seconds, 2), "unit": "s", "target": None,
         "note": f"{rows:,} rows: index file, chunks, keyword index, documents table, checksums, fsync, verify"},
        {"name": "incremental.rebuild_ratio_with_write",
         "label": "incremental / full, adding 1%, version write included",
         "value": round(end_to_end, 4), "unit": "fraction", "target": {"op": "<=", "value": TARGET_RATIO},
         "note": "(incremental + write) / (full + write); merge reads of the segments not included"},
        {"name": "incremental.recall_at_10", "label": "recall@10 of the incremental build (held-out queries)",
         "value": inc_tuned["recall_at_10"], "unit": "fraction", "target": {"op": ">=", "value": RECALL_TARGET},
         "note": f"nprobe {inc_tuned['nprobe']} tuned on 200 held-out queries; ladder {inc_tuned['ladder']}"},
        {"name": "incremental.full_build_peak_rss", "label": "peak resident memory, full build",
         "value": round(full_memory.peak, 1), "unit": "MiB", "target": None,
         "note": f"process RSS before {full_memory.baseline:.0f} MiB (vectors in memory); "
                 f"index file {index_mib:.0f} MiB"},
        {"name": "incremental.incremental_build_peak_rss", "label": "peak resident memory, incremental build",
         "value": round(inc_memory.peak, 1), "unit": "MiB", "target": None,
         "note": f"process RSS before {inc_memory.baseline:.0f} MiB; the copy of the published index is in memory"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k vectors instead of 1M")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
