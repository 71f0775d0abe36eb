"""FAISS indexes: build in steps, write a version directory aside, verify it, load it for search.

A version directory holds index.faiss, chunks.jsonl (one record per vector, in id order),
offsets.npy (byte offset of each record, so a search reads only its hits), keyword/ (the BM25 index
over the same rows, `shared.index.keyword`), documents.jsonl (one entry per document,
`shared.index.doctable`) and manifest.json. All are written, verified and loaded together.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from shared.index import doctable, keyword
from shared.index.doctable import DocTable
from shared.index.keyword import KEYWORD_DIR, KeywordIndex

INDEX_FILE, CHUNKS_FILE, OFFSETS_FILE, MANIFEST_FILE = "index.faiss", "chunks.jsonl", "offsets.npy", "manifest.json"
KIND_FLAT = "flat-ip"
KIND_IVF = "ivf-flat-ip"


class VerifyFailed(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_in_steps(index: faiss.Index, vectors: np.ndarray, step: int, between_steps: Callable[[int], None]) -> None:
    total = len(vectors)
    for start in range(0, total, step):
        index.add(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32))
        between_steps(min(start + step, total))


def build_flat(vectors: np.ndarray, step: int, between_steps: Callable[[int], None]) -> faiss.Index:
    """An exact inner-product index over (already normalized) vectors, added `step` rows at a time;
    `between_steps(done)` runs after each step (progress, cancel and lease checks)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    _add_in_steps(index, vectors, step, between_steps)
    return index


def ivf_lists(n: int) -> int:
    """About 4 * sqrt(n) inverted lists (4096 at 1M vectors), with at least 39 training points each."""
    return int(max(16, min(65536, 4 * np.sqrt(n), n // 39)))


def build_ivf(vectors: np.ndarray, step: int, between_steps: Callable[[int], None], nprobe: int,
              seed: int = 1234) -> faiss.Index:
    """An approximate inner-product IVF index for large collections: k-means on a sample (about 64
    points per list), then vectors added in steps like the exact build."""
    n, dim = vectors.shape
    nlist = ivf_lists(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=min(n, nlist * 64), replace=False))]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = min(nprobe, nlist)
    between_steps(0)
    _add_in_steps(index, vectors, step, between_steps)
    return index


def measure_recall(index: faiss.Index, vectors: np.ndarray, k: int = 10, queries: int = 200, seed: int = 99) -> float:
    """recall@k of `index` against exact search, for queries drawn from the indexed vectors."""
    n = len(vectors)
    if n == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    q = np.ascontiguousarray(vectors[rng.choice(n, size=min(queries, n), replace=False)], dtype=np.float32)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k = min(k, n)
    _, truth = exact.search(q, k)
    _, got = index.search(q, k)
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got, strict=True))
    return hits / (len(q) * k)


def write_version(directory: Path, index: faiss.Index, records: list[dict], manifest: dict) -> dict:
    """Write the files of a version into `directory` (a temporary one); returns the full manifest."""
    faiss.write_index(index, str(directory / INDEX_FILE))
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    with open(directory / CHUNKS_FILE, "wb") as fh:
        for i, rec in enumerate(records):
            fh.write(json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n")
            offsets[i + 1] = fh.tell()
    np.save(directory / OFFSETS_FILE, offsets)
    full = {**manifest, "vectors": int(index.ntotal), "dim": int(index.d),
            "checksum": sha256_file(directory / INDEX_FILE),
            "keyword": keyword.save(directory, records), "documents_table": doctable.write(directory, records)}
    (directory / MANIFEST_FILE).write_text(json.dumps(full, indent=2))
    return full


def verify_version(directory: Path) -> dict:
    """Load what was written and check it against the manifest; returns the manifest."""
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if sha256_file(directory / INDEX_FILE) != manifest["checksum"]:
        raise VerifyFailed(f"checksum mismatch in {directory}")
    index = faiss.read_index(str(directory / INDEX_FILE))
    if index.ntotal != manifest["vectors"] or index.d != manifest["dim"]:
        raise VerifyFailed(f"index has {index.ntotal}x{index.d}, manifest says {manifest['vectors']}x{manifest['dim']}")
    offsets = np.load(directory / OFFSETS_FILE)
    if len(offsets) != manifest["vectors"] + 1 or offsets[-1] != os.path.getsize(directory / CHUNKS_FILE):
        raise VerifyFailed(f"chunk store does not match the index in {directory}")
    try:
        # Versions written before the keyword index and documents table existed have neither; they
        # stay valid for rollback.
        if "keyword" in manifest:
            keyword.verify(directory, manifest)
        if "documents_table" in manifest:
            doctable.verify(directory, manifest)
    except (keyword.KeywordVerifyFailed, doctable.DocTableVerifyFailed, KeyError) as exc:
        raise VerifyFailed(str(exc)) from exc
    return manifest


@dataclass
class Hit:
    score: float
    record: dict


class LoadedVersion:
    """One index version opened for search. Immutable once built; shared by concurrent readers."""

    def __init__(self, directory: Path, version: int):
        started = time.perf_counter()
        self.directory = directory
        self.version = version
        self.manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if self.manifest.get("kind") == KIND_IVF:
            # Memory-mapped: loads in milliseconds whatever the size; warm() faults pages in before the swap.
            self.index = faiss.read_index(str(directory / INDEX_FILE), faiss.IO_FLAG_MMAP)
            faiss.extract_index_ivf(self.index).nprobe = int(self.manifest.get("nprobe", 32))
        else:
            self.index = faiss.read_index(str(directory / INDEX_FILE))
        self.offsets = np.load(directory / OFFSETS_FILE)
        self._fd = os.open(directory / CHUNKS_FILE, os.O_RDONLY)
        # Versions written before keyword search existed have no keyword index: they answer vector
        # searches only (a rebuild adds it).
        self.keyword = KeywordIndex(directory, self.vectors) if (directory / KEYWORD_DIR).is_dir() else None
        self.documents = DocTable.load(directory, self.vectors, (self.record(i) for i in range(self.vectors)))
        self.load_seconds = time.perf_counter() - started

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    @property
    def vectors(self) -> int:
        return int(self.index.ntotal)

    def record(self, i: int) -> dict:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(os.pread(self._fd, end - start, start))

    def records(self, rows: list[list[int]]) -> list[dict]:
        """The chunk records of [start, stop) row ranges, in row order."""
        return [self.record(i) for start, stop in rows for i in range(start, stop)]

    def nearest(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, cosine) of the `k` nearest rows, best first. With `allowed` (a boolean mask over rows)
        only those rows are candidates, chosen by FAISS itself through an id selector, so a selective
        filter still gets its true top k; an IVF search that finds fewer than k in its probed lists
        probes every list before it gives up."""
        if self.index.ntotal == 0 or k <= 0:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if allowed is None:
            scores, ids = self.index.search(q, min(k, self.index.ntotal))
        else:
            wanted = np.flatnonzero(allowed).astype(np.int64)
            if not len(wanted):
                return []
            k = min(k, len(wanted))
            selector = faiss.IDSelectorBatch(wanted)
            ivf = faiss.try_extract_index_ivf(self.index)
            if ivf is None:
                scores, ids = self.index.search(q, k, params=faiss.SearchParameters(sel=selector))
            else:
                scores, ids = self.index.search(q, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe))
                if int((ids[0] >= 0).sum()) < k:
                    scores, ids = self.index.search(
                        q, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist))
        return [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        return [Hit(score, self.record(row)) for row, score in self.nearest(query, k)]

    def warm(self, searches: int = 16) -> None:
        """Searches touch the index's pages before any request does (a memory-mapped IVF index
        faults its lists in on first use)."""
        if not self.index.ntotal:
            return
        rng = np.random.default_rng(0)
        for _ in range(searches if self.manifest.get("kind") == KIND_IVF else 1):
            q = rng.standard_normal(self.index.d).astype(np.float32)
            self.index.search((q / np.linalg.norm(q)).reshape(1, -1), 10)
        if self.keyword is not None:
            self.keyword.warm()
