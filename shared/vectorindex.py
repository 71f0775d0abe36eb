"""FAISS indexes: build in steps, write a version directory aside, verify it, load it for search.

A version directory holds index.faiss, chunks.jsonl (one record per vector, in id order),
offsets.npy (byte offset of each record, so a search reads only its hits) and manifest.json.
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

INDEX_FILE, CHUNKS_FILE, OFFSETS_FILE, MANIFEST_FILE = "index.faiss", "chunks.jsonl", "offsets.npy", "manifest.json"
KIND_FLAT = "flat-ip"


class VerifyFailed(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_flat(vectors: np.ndarray, step: int, between_steps: Callable[[int], None]) -> faiss.Index:
    """An exact inner-product index over (already normalized) vectors, added `step` rows at a time;
    `between_steps(done)` runs after each step (progress, cancel and lease checks)."""
    dim = vectors.shape[1]
    index = faiss.IndexFlatIP(dim)
    total = len(vectors)
    for start in range(0, total, step):
        index.add(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32))
        between_steps(min(start + step, total))
    return index


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
            "checksum": sha256_file(directory / INDEX_FILE)}
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
        self.index = faiss.read_index(str(directory / INDEX_FILE))
        self.offsets = np.load(directory / OFFSETS_FILE)
        self._fd = os.open(directory / CHUNKS_FILE, os.O_RDONLY)
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

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        if self.index.ntotal == 0:
            return []
        scores, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32),
                                        min(k, self.index.ntotal))
        return [Hit(float(s), self.record(int(i))) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def warm(self) -> None:
        """One search touches the index's pages before any request does."""
        if self.index.ntotal:
            self.search(np.zeros(self.index.d, dtype=np.float32), 1)
