"""Incremental IVF build against a full build, in-process, on clustered synthetic vectors, as format 2
(`shared.index.parts`, `shared.jobs.build`) does them.

A collection of N x 384 unit vectors drawn around 4096 random unit centres (1024 with --quick), so
that recall means something. The full build is what a rebuild does for an IVF index: k-means, assign,
add, tune nprobe; its version write is one part of N rows (index, Arrow tables, keyword postings,
part.json, every file hashed, fsync, verify). The incremental build is what a rebuild does from the
published version: open its part (memory-mapped, checked by part.json checksum and file sizes and
mtimes, never copied), mark 0.1% of the rows deleted (a bitmap in the new version), assign +1% new rows
to the reused quantizer, check the retrain rules, add them to a new part on that quantizer; nprobe is
kept (the rows stay within the range it was tuned for). Its version write is only the new part plus
the manifest and deletion bitmap. Recall@10 is that of the incremental version as an API process
searches it (`PartsVersion.nearest` over both parts at the kept nprobe, deleted rows excluded) on 200
held-out queries from the same clusters, against exact search over its live rows.

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
from shared.index.parts import (
    PART_FILE,
    PARTS_DIR,
    PartRef,
    PartsVersion,
    open_parts,
    part_refs,
    verify_version,
    write_part,
    write_version_manifest,
)
from shared.index.vectorindex import ivf_on, read_manifest, sha256_file, train_ivf, training_rows
from shared.jobs.build import _tuning_stale
from shared.settings import Settings
from shared.storage import fsync_tree
from tests.support import write_part_version

DIM = 384
TARGET_RATIO = 0.10
RECALL_TARGET = 0.95
MOST_NPROBE = Settings.ivf_nprobe  # the default ladder


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


def _records(first: int, count: int) -> list[dict]:
    """Short synthetic chunk records, four per document, for rows first..first+count-1."""
    return [{"doc_id": f"doc{i // 4}", "chunk_id": f"doc{i // 4}#{i % 4}", "text": f"synthetic chunk {i} words",
             "heading_path": [], "metadata": {}, "updated_at": 0.0} for i in range(first, first + count)]


def _write_full(indexes: Path, index: faiss.Index, training: dict, tuned: dict) -> float:
    """Version 1 as a full rebuild writes it (one part of every row), fsynced and verified; its seconds."""
    records = _records(0, index.ntotal)
    started = time.perf_counter()
    version = write_part_version(indexes, 1, index, records, {
        "kind": "ivf-flat-ip", "model": "bench", "ivf_training": training, "tuned_rows": int(index.ntotal),
        **{name: tuned[name] for name in ("nprobe", "recall_at_10", "recall_target")}})
    fsync_tree(indexes)
    verify_version(version)
    return time.perf_counter() - started


def _incremental_build(previous: Path, deleted: np.ndarray, added: np.ndarray) -> tuple[list[PartRef], faiss.Index,
                                                                                        dict, dict]:
    """What `shared.jobs.build.incremental` does for an IVF version: the published part kept, its
    deleted rows marked, the new rows in a new index on its quantizer. Returns the kept refs (with their
    deletions), the new part's index, the manifest facts and the laps."""
    laps, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        laps[name] = round(now - clock, 3)
        clock = now

    manifest = read_manifest(previous)
    refs = part_refs(previous, manifest)
    parts = open_parts(previous, refs)
    lap("open")
    kept = [PartRef(ref.name, ref.offset, ref.rows, ref.sha256, deleted) for ref in refs]
    rows = sum(ref.live for ref in kept) + len(added)
    stale = _tuning_stale(manifest, rows, Settings())
    if stale is not None:
        raise RuntimeError(f"the benchmark's change should keep the published nprobe: {stale}")
    quantizer = faiss.clone_index(parts[0].ivf.quantizer)
    top, lists = ivf.assign(quantizer, added)
    training = ivf.after_assigning(manifest["ivf_training"], top)
    sizes = sum((ivf.list_sizes(part.index) for part in parts), np.zeros(quantizer.ntotal, dtype=np.int64))
    reason = ivf.retrain_reason(training, rows, sizes + np.bincount(lists, minlength=quantizer.ntotal))
    if reason is not None:
        raise RuntimeError(f"the benchmark's new rows should not need a retrain: {reason}")
    lap("assign")
    index = ivf_on(quantizer)
    ivf.add_assigned(index, added, lists, 65536, lambda done: None)
    lap("add")
    facts = {"kind": "ivf-flat-ip", "model": "bench", "dim": int(index.d), "ivf_training": training,
             **{name: manifest[name] for name in ("nprobe", "recall_at_10", "tuned_rows")}}
    return kept, index, facts, laps


def _write_incremental(indexes: Path, kept: list[PartRef], index: faiss.Index, facts: dict) -> float:
    """Version 2 as an incremental rebuild writes it: the new part and the manifest (with the kept part's
    deletion bitmap), fsynced and verified (the new part hashed in full, the kept one by size and
    mtime); its seconds."""
    offset = sum(ref.rows for ref in kept)
    records = _records(offset, index.ntotal)
    started = time.perf_counter()
    part_dir, version = indexes / PARTS_DIR / "p2", indexes / "v2"
    part_dir.mkdir()
    write_part(part_dir, index, records, lambda _doc: 0, [], 2)
    version.mkdir()
    new = PartRef("p2", offset, index.ntotal, sha256_file(part_dir / PART_FILE), None)
    write_version_manifest(version, [*kept, new], {"version": 2, "documents": 0, **facts})
    fsync_tree(part_dir)
    fsync_tree(version)
    verify_version(version)
    return time.perf_counter() - started


def _recall(version: PartsVersion, queries: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top 10 (over the live rows) that the version's search returns."""
    found = [len({row for row, _ in version.nearest(q, 10)} & set(t.tolist())) / 10 for q, t in zip(queries, truth,
                                                                                                  strict=True)]
    return round(float(np.mean(found)), 4)


def run(quick: bool) -> list[dict]:
    return measure(100_000 if quick else 1_000_000, 1024 if quick else 4096)


def measure(n: int, clusters: int) -> list[dict]:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(n, centres, seed=1)
    queries = clustered(200, centres, seed=2)  # held out: never added to any index
    added = clustered(n // 100, centres, seed=3)
    keep = np.random.default_rng(4).random(n) >= 0.001

    # The exact top 10 of each held-out query over the incremental version's live rows, in its row numbers
    # (the first part's rows keep theirs, deleted or not; the new part's follow).
    live = np.concatenate([np.flatnonzero(keep), n + np.arange(len(added))])
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors[keep])
    exact.add(added)
    truth = live[exact.search(queries, 10)[1]]
    del exact

    with PeakRss() as full_memory:
        started = time.perf_counter()
        index, training, full_tuned = _full_build(vectors, queries)
        full_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="swapline-bench-") as tmp:
        indexes = Path(tmp)
        full_write = _write_full(indexes, index, training, full_tuned)
        index_mib = os.path.getsize(indexes / PARTS_DIR / "p1" / "index.faiss") / 2**20
        nlist = index.nlist
        del index, vectors
        with PeakRss() as inc_memory:
            started = time.perf_counter()
            kept, new_index, facts, laps = _incremental_build(indexes / "v1", ~keep, added)
            inc_seconds = time.perf_counter() - started
        inc_write = _write_incremental(indexes, kept, new_index, facts)
        del new_index, kept
        served = PartsVersion(indexes / "v2", 2, read_manifest(indexes / "v2"))
        rows = served.vectors
        recall = _recall(served, queries, truth)
        del served  # its files are mapped: unmapped before the folder goes
    end_to_end = (inc_seconds + inc_write) / (full_seconds + full_write)
    size = f"{n:,} x {DIM}, {clusters} clusters, nlist {nlist}"
    change = f"+{len(added):,} rows, -{int((~keep).sum()):,} rows"
    return [
        {"name": "incremental.full_build_seconds", "label": "full IVF build (train, add, tune nprobe)",
         "value": round(full_seconds, 2), "unit": "s", "target": None,
         "note": f"{size}; nprobe {full_tuned['nprobe']}, recall@10 {full_tuned['recall_at_10']}"},
        {"name": "incremental.incremental_build_seconds", "label": "incremental IVF build (+1%)",
         "value": round(inc_seconds, 2), "unit": "s", "target": None,
         "note": f"{change} -> {rows:,} live rows in 2 parts; {json.dumps(laps)}; nprobe {facts['nprobe']} kept"},
        {"name": "incremental.build_ratio", "label": "incremental build / full build, adding 1%",
         "value": round(inc_seconds / full_seconds, 4), "unit": "fraction",
         "target": {"op": "<=", "value": TARGET_RATIO}, "note": f"{size}; index work only (version write excluded)"},
        {"name": "incremental.full_version_write_seconds", "label": "version write after the full build",
         "value": round(full_write, 2), "unit": "s", "target": None,
         "note": f"{n:,} rows in one part: index, Arrow tables, keyword postings, part.json, checksums, fsync, "
                 "verify"},
        {"name": "incremental.version_write_seconds", "label": "version write after the incremental build",
         "value": round(inc_write, 2), "unit": "s", "target": None,
         "note": f"the new part ({len(added):,} rows) hashed and verified, the kept part checked by size and "
                 "mtime; manifest and deletion bitmap; fsync"},
        {"name": "incremental.rebuild_ratio_with_write",
         "label": "incremental / full, adding 1%, version write included",
         "value": round(end_to_end, 4), "unit": "fraction", "target": {"op": "<=", "value": TARGET_RATIO},
         "note": "(incremental + its write) / (full + its write); merge reads of the segments not included"},
        {"name": "incremental.recall_at_10", "label": "recall@10 of the incremental version (held-out queries)",
         "value": recall, "unit": "fraction", "target": {"op": ">=", "value": RECALL_TARGET},
         "note": f"PartsVersion.nearest over 2 parts at the kept nprobe {facts['nprobe']} (tuned on the full "
                 f"build to {full_tuned['recall_at_10']}), 200 held-out queries, exact top 10 over the live rows"},
        {"name": "incremental.full_build_peak_rss", "label": "peak resident memory, full build",
         "value": round(full_memory.peak, 1), "unit": "MiB", "target": None,
         "note": f"process RSS before {full_memory.baseline:.0f} MiB (vectors in memory); "
                 f"index file {index_mib:.0f} MiB"},
        {"name": "incremental.incremental_build_peak_rss", "label": "peak resident memory, incremental build",
         "value": round(inc_memory.peak, 1), "unit": "MiB", "target": None,
         "note": f"process RSS before {inc_memory.baseline:.0f} MiB; the published part memory-mapped, "
                 "the new rows' index in memory"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k vectors instead of 1M")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
