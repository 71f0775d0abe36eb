"""FAISS indexes: build in steps (exact or IVF), check index files before FAISS reads them; and format 1
of a version, which this release still loads (format 2, what rebuilds write now, is `shared.index.parts`;
`write_version` stays to test that format 1 loads).

A format-1 version directory holds index.faiss, chunks.jsonl (one record per vector, in id order),
offsets.npy (byte offset of each record, so a search reads only its hits), keyword/ (the BM25 index
over the same rows, `shared.index.keyword`), documents.jsonl (one entry per document,
`shared.index.doctable`) and manifest.json, which records the sha256 of every other file. All are
written, verified and loaded together. Every load (the worker's verify and each API process's
`LoadedVersion`) checks those checksums before reading anything else, and bounds every size read from a
file by the file's length before allocating, so a damaged or forged file is refused, never served and
never the cause of a huge allocation.

**Index kind by size.** Exact `IndexFlatIP` below `approx_threshold` (200k) vectors: a query scans
everything (~20 ms at 100k here), recall is 1 and there is nothing to train. From there on, IVF-Flat
(about 4 * sqrt(n) lists), chosen over HNSW and IVF-PQ for 1M x 384 on a 24 GiB machine:
- memory: IVF-Flat stores the raw vectors (1.5 GiB at 1M) plus ids; HNSW stores them plus a graph
  (M=32: ~0.25 GiB more); IVF-PQ would shrink them 30x, but memory is not what runs out at this size,
  and PQ's approximation costs recall that a re-ranking step would have to win back;
- memory-mapping: FAISS maps IVF lists (`IO_FLAG_MMAP`: a swap loads in milliseconds, pages are
  shared between API processes); it cannot map an HNSW graph, which every API process would read
  into its own memory at each swap;
- builds: IVF trains k-means once and reuses the centroids across versions (`shared.index.ivf`), and
  its lists take rows added on trained centroids, which makes incremental builds cheap; HNSW cannot
  remove vectors and inserts cost a graph search each (minutes at 1M on 2 cores);
- recall: IVF-Flat's only approximation is which lists are probed, so nprobe (tuned at build time to
  a recall target on query-like probes, `shared.index.ivf`) trades latency for recall directly.
Past `compress_threshold` (2M) the floats no longer fit an API process's budget, and the lists hold
codes (4-bit PQ behind a rotation, or 8-bit scalar) with exact re-ranking from memory-mapped float
vectors instead (`shared.index.compressed`).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.clustering import two_level_clustering

from shared.index import doctable, ivf, keyword
from shared.index.doctable import DocTable
from shared.index.keyword import KEYWORD_DIR, KeywordIndex
from shared.storage import check_npy, reraise, write_npy, written

INDEX_FILE, CHUNKS_FILE, OFFSETS_FILE, MANIFEST_FILE = "index.faiss", "chunks.jsonl", "offsets.npy", "manifest.json"
KIND_FLAT = "flat-ip"
KIND_IVF = "ivf-flat-ip"
KIND_IVF_SQ = "ivf-sq8-ip"  # compressed: 8-bit codes in the lists, exact re-ranking (`shared.index.compressed`)
KIND_IVF_PQ = "ivf-opq-pq4fs-ip"  # compressed: a rotation, 4-bit PQ codes scanned fast, exact re-ranking
COMPRESSED_KINDS = (KIND_IVF_SQ, KIND_IVF_PQ)  # the kinds whose parts keep their float vectors beside the codes
IVF_KINDS = (KIND_IVF, *COMPRESSED_KINDS)
# The FAISS four-letter code each IVF kind's file starts with.
IVF_CODES = {KIND_IVF: b"IwFl", KIND_IVF_SQ: b"IwSq", KIND_IVF_PQ: b"IxPT"}
MANIFEST_MAX_BYTES = 1 << 20


class VerifyFailed(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_in_steps(index: faiss.Index, vectors: np.ndarray, step: int, between_steps: Callable[[int], None]) -> None:
    total = len(vectors)
    for start in range(0, total, step):
        index.add(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32))
        between_steps(min(start + step, total))


def kind_of(index: faiss.Index) -> str:
    """The manifest kind of a FAISS index Swapline built."""
    ivf_index = faiss.try_extract_index_ivf(index)
    if ivf_index is None:
        return KIND_FLAT
    if isinstance(faiss.downcast_index(ivf_index), faiss.IndexIVFPQFastScan):
        return KIND_IVF_PQ
    return KIND_IVF_SQ if isinstance(faiss.downcast_index(ivf_index), faiss.IndexIVFScalarQuantizer) else KIND_IVF


def build_flat(vectors: np.ndarray, step: int, between_steps: Callable[[int], None]) -> faiss.Index:
    """An exact inner-product index over (already normalized) vectors, added `step` rows at a time;
    `between_steps(done)` runs after each step (progress, cancel and lease checks)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    add_in_steps(index, vectors, step, between_steps)
    return index


def ivf_lists(n: int) -> int:
    """About 4 * sqrt(n) inverted lists (4000 at 1M vectors), with at least 39 training points each in
    the four fifths of the rows `training_rows` may take."""
    return int(max(16, min(65536, 4 * np.sqrt(n), n // 49)))


def training_rows(n: int, nlist: int, seed: int = 1234) -> np.ndarray:
    """The rows k-means trains on: about 64 per list, and never more than four fifths of the rows, so
    that the rows left out measure the trained quantizer as new data will (`ivf.training_record`)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(nlist * 64, n - n // 5), replace=False))


# From this many lists k-means runs in two levels (faiss.contrib.clustering): about sqrt(nlist) coarse
# clusters, each split in proportion to its rows, then a few Lloyd iterations over all the lists from
# there. At 1M realistic rows (4000 lists) that trained in 27 s instead of 50 (AMD EPYC Zen 4, 2 cores)
# with recall at nprobe 64 / 256 / 1024 of 0.746 / 0.930 / 0.995 against 0.764 / 0.932 / 0.994; its cost
# grows with rows x sqrt(lists) instead of rows x lists, which is what a 10M build (12,649 lists) needs.
# The refining iterations are `ivf.spherical_lloyd` (a matrix product a block, not FAISS's tiled search):
# at the same 1M on an Intel Xeon Ice Lake, training took 45-55 s instead of 117 s, recall at nprobe
# 64 / 256 / 1024 0.7345 / 0.9295 / 0.992 on 200 held-out queries.
TWO_LEVEL_FROM = 1024
REFINE_ITERATIONS = 4


def train_quantizer(sample: np.ndarray, nlist: int) -> faiss.IndexFlatIP:
    """A flat inner-product quantizer of `nlist` centroids, spherical k-means on `sample`: FAISS's own
    IVF training below TWO_LEVEL_FROM lists, two-level clustering refined over all lists from there."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    dim = sample.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if nlist < TWO_LEVEL_FROM:
        faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT).train(sample)
        return quantizer
    coarse, _ = two_level_clustering(sample, int(np.sqrt(nlist)), nlist, spherical=True)
    quantizer.add(ivf.spherical_lloyd(sample, coarse, REFINE_ITERATIONS))
    return quantizer


def train_ivf(vectors: np.ndarray, seed: int = 1234) -> faiss.IndexIVFFlat:
    """An empty IVF-Flat inner-product index whose coarse quantizer is trained (k-means) on
    `training_rows` of `vectors`."""
    n, dim = vectors.shape
    nlist = ivf_lists(n)
    return ivf_on(train_quantizer(vectors[training_rows(n, nlist, seed)], nlist))


def ivf_on(quantizer: faiss.Index) -> faiss.IndexIVFFlat:
    """An empty IVF-Flat inner-product index on a copy of a trained quantizer (no k-means)."""
    copy = faiss.clone_index(quantizer)
    return faiss.IndexIVFFlat(copy, copy.d, copy.ntotal, faiss.METRIC_INNER_PRODUCT)


def build_ivf(vectors: np.ndarray, step: int, between_steps: Callable[[int], None], nprobe: int = 1,
              seed: int = 1234) -> tuple[faiss.IndexIVFFlat, np.ndarray, np.ndarray]:
    """An approximate inner-product IVF index trained on these vectors: k-means on a sample, then the
    vectors added in steps like the exact build, searched with `nprobe` lists (a rebuild tunes it
    afterwards). Also returns each row's inner product with its centroid and its list, from which the
    training record is made (`ivf.training_record`)."""
    index = train_ivf(vectors, seed)
    index.nprobe = min(nprobe, index.nlist)
    between_steps(0)
    top, lists = ivf.assign(index.quantizer, vectors)
    ivf.add_assigned(index, vectors, lists, step, between_steps)
    return index, top, lists


def write_version(directory: Path, index: faiss.Index, records: list[dict], manifest: dict) -> dict:
    """Write the files of a version into `directory` (a temporary one); returns the full manifest.
    Every write is checked (see `shared.storage.written`): a full volume raises StorageFull."""
    what = "an index version"
    with written(directory / INDEX_FILE, what) as fh:
        # Through a Python writer, so a failed write raises OSError with its errno (faiss's own file
        # writer reports a short write only as text).
        # (faiss's stubs leave out its Python callback writer and reader.)
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    with written(directory / CHUNKS_FILE, what) as fh:
        position = 0
        for i, rec in enumerate(records):
            line = json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n"
            fh.write(line)
            position += len(line)
            offsets[i + 1] = position
    with written(directory / OFFSETS_FILE, what) as fh:
        write_npy(fh, offsets)
    try:
        tables = {"keyword": keyword.save(directory, records), "documents_table": doctable.write(directory, records)}
    except OSError as exc:
        reraise(exc, what)  # bm25s writes its own files: a full volume still says so
    files = {name: sha256_file(directory / name) for name in version_files(directory)}
    full = {**manifest, "vectors": int(index.ntotal), "dim": int(index.d), "checksum": files[INDEX_FILE],
            "files": files, **tables}
    with written(directory / MANIFEST_FILE, what) as fh:
        fh.write(json.dumps(full, indent=2).encode())
    return full


def version_files(directory: Path) -> list[str]:
    """Every file of a version but its manifest, as paths relative to the version directory."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def _plain_relative(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_FILE
    if path.stat().st_size > MANIFEST_MAX_BYTES:
        raise VerifyFailed(f"{path} is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as exc:
        raise VerifyFailed(f"{path} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checksum"), str):
        raise VerifyFailed(f"{path} is not a version manifest")
    return manifest


def _header_fields(data: bytes | mmap.mmap, offset: int) -> tuple[int, int, int]:
    """(d, ntotal, offset after) of a FAISS index header at `offset` (after its four-letter code)."""
    d, ntotal = struct.unpack_from("<iq", data, offset)
    offset += 4 + 8 + 16 + 1  # d, ntotal, two unused int64, is_trained
    (metric,) = struct.unpack_from("<i", data, offset)
    return d, ntotal, offset + 4 + (4 if metric > 1 else 0)  # metric_arg follows the metrics that have one


def _check_index_file(path: Path, dim: int, kind: str) -> None:
    """An IVF index file's lengths, each checked against the dimension and the file's size before FAISS
    allocates from them (no read flag maps a quantizer, an encoder or a fast-scan list): a forged or
    damaged length is refused before FAISS sees the file."""
    size = os.path.getsize(path)
    if size < 64:
        raise VerifyFailed(f"{path} is too short for an index header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            if data[:4] != IVF_CODES[kind]:
                raise VerifyFailed(f"{path} is not an index of kind {kind}")
            if kind == KIND_IVF_PQ:
                _check_pq_index(path, data, dim)
                return
            offset = _check_ivf_at(path, data, 0, dim, IVF_CODES[kind])[1]
            if kind == KIND_IVF_SQ:
                _check_sq_encoder(path, data, offset, dim)
        except struct.error as exc:
            raise VerifyFailed(f"{path} is too short for the index it claims to be") from exc


def _check_ivf_at(path: Path, data: mmap.mmap, offset: int, dim: int, code: bytes) -> tuple[int, int]:
    """The IVF header at `offset` and its quantizer's centroid table (its length must fit the file);
    returns (nlist, the offset after its direct map, which must be empty: Swapline keeps none)."""
    if data[offset:offset + 4] != code:
        raise VerifyFailed(f"{path} holds an index Swapline never writes there")
    d, _, offset = _header_fields(data, offset + 4)
    nlist, _nprobe = struct.unpack_from("<QQ", data, offset)
    offset += 16
    if data[offset:offset + 4] not in (b"IxFI", b"IxF2"):
        raise VerifyFailed(f"{path} holds a quantizer Swapline never writes")
    qd, qtotal, offset = _header_fields(data, offset + 4)
    (floats,) = struct.unpack_from("<Q", data, offset)
    if d != dim or qd != dim or qtotal != nlist or floats != nlist * dim or floats * 4 > len(data):
        raise VerifyFailed(f"{path} claims a quantizer of {floats} floats ({qtotal}x{qd}, nlist {nlist}) that does "
                           f"not match its dimension {dim} or its {len(data)} bytes")
    offset += 8 + floats * 4
    # A direct map of another type makes FAISS read one more length (a hash table's) before the codes.
    map_type, map_size = struct.unpack_from("<bQ", data, offset)
    if map_type != 0 or map_size != 0:
        raise VerifyFailed(f"{path} holds a direct map ({map_type}/{map_size}) Swapline never writes")
    return nlist, offset + 9


def _check_sq_encoder(path: Path, data: mmap.mmap, offset: int, dim: int) -> None:
    """After an IVF-SQ8 index's quantizer: the 8-bit encoder, whose range table FAISS also allocates
    from a length in the file: 2 x dim floats, or refused."""
    qtype, stat, _arg, sq_dim, code_size, trained = struct.unpack_from("<iifQQQ", data, offset)
    ranges = offset + struct.calcsize("<iifQQQ")  # where the range floats start
    if (qtype != faiss.ScalarQuantizer.QT_8bit or not 0 <= stat <= 3 or sq_dim != dim or code_size != dim
            or trained != 2 * dim or ranges + trained * 4 > len(data)):
        raise VerifyFailed(f"{path} claims an 8-bit encoder ({qtype}, range statistic {stat}, {sq_dim}-d, code "
                           f"{code_size} bytes, {trained} range floats) that does not fit dimension {dim}")


PQ_BLOCK_ROWS = 32  # rows per fast-scan block
BLOCK_LISTS_CODE_SIZE = (1 << 64) - 1  # what FAISS writes as a block list's per-row code size: none


def _check_pq_index(path: Path, data: mmap.mmap, dim: int) -> None:
    """An OPQ + IVF-PQ4 fast-scan file (`shared.index.compressed`): a rotation of dim x dim floats and
    no bias, the IVF header and quantizer, the fast-scan fields and 4-bit codebooks of dim / 4
    sub-quantizers, then every list's ids and code blocks: each length agrees with the others and the
    whole fits the file, so FAISS never allocates more than the file holds."""
    d, ntotal, offset = _header_fields(data, 4)
    (transforms,) = struct.unpack_from("<i", data, offset)
    offset += 4
    if d != dim or transforms != 1 or data[offset:offset + 4] != b"LTra":
        raise VerifyFailed(f"{path} is not a {dim}-d rotation in front of an index")
    have_bias, matrix = struct.unpack_from("<bQ", data, offset + 4)
    offset += 4 + 9
    if have_bias or matrix != dim * dim or offset + matrix * 4 > len(data):
        raise VerifyFailed(f"{path} claims a rotation of {matrix} floats, not {dim}x{dim}")
    offset += matrix * 4
    bias, d_in, d_out = struct.unpack_from("<Qii", data, offset)
    if bias or d_in != dim or d_out != dim:
        raise VerifyFailed(f"{path} claims a rotation from {d_in} to {d_out} dimensions with {bias} bias floats")
    offset += 8 + 8 + 1
    nlist, offset = _check_ivf_at(path, data, offset, dim, b"IwPf")
    subspaces = dim // 4
    by_residual, code_size, bbs, m2, implem, qbs2 = struct.unpack_from("<bQiQiQ", data, offset)
    offset += struct.calcsize("<bQiQiQ")
    pq_d, pq_m, nbits, centroids = struct.unpack_from("<QQQQ", data, offset)
    offset += 32
    if (by_residual or implem or qbs2 or code_size != subspaces // 2 or bbs != PQ_BLOCK_ROWS or m2 != subspaces
            or pq_d != dim or pq_m != subspaces or nbits != 4 or centroids != dim * 16
            or offset + centroids * 4 > len(data)):
        raise VerifyFailed(f"{path} claims 4-bit codes ({pq_m} sub-quantizers of {nbits} bits, {centroids} "
                           f"centroid floats, {code_size}-byte codes, blocks of {bbs}) that do not fit dimension {dim}")
    offset += centroids * 4
    if data[offset:offset + 4] != b"ilbl":
        raise VerifyFailed(f"{path} holds inverted lists Swapline never writes")
    lists, list_code_size, per_block, block_bytes = struct.unpack_from("<QQQQ", data, offset + 4)
    offset += 4 + 32
    if lists != nlist or list_code_size != BLOCK_LISTS_CODE_SIZE or per_block != PQ_BLOCK_ROWS \
            or block_bytes != PQ_BLOCK_ROWS * code_size:
        raise VerifyFailed(f"{path} claims {lists} lists in blocks of {per_block} rows, {block_bytes} bytes")
    rows = 0
    for _ in range(nlist):
        (ids,) = struct.unpack_from("<Q", data, offset)
        offset += 8 + 8 * ids
        if offset + 8 > len(data):
            raise VerifyFailed(f"{path} claims a list of {ids} rows past the end of the file")
        (codes,) = struct.unpack_from("<Q", data, offset)
        if codes != -(-ids // per_block) * block_bytes or offset + 8 + codes > len(data):
            raise VerifyFailed(f"{path} claims a list of {ids} rows in {codes} code bytes")
        offset += 8 + codes
        rows += ids
    if rows != ntotal:
        raise VerifyFailed(f"{path} lists {rows} rows, its header {ntotal}")


def check_index_size(path: Path, manifest: dict) -> None:
    """Before FAISS reads a length from the index file: the manifest names a shape, and the file can
    hold it (a flat index its vectors; an IVF index its lengths, see `_check_index_file`)."""
    vectors, dim = int(manifest.get("vectors", -1)), int(manifest.get("dim", -1))
    if vectors < 0 or dim <= 0:
        raise VerifyFailed(f"manifest in {path.parent} has no vector count or dimension")
    if manifest.get("kind") in IVF_KINDS:
        _check_index_file(path, dim, manifest["kind"])
    elif os.path.getsize(path) < vectors * dim * 4:
        raise VerifyFailed(f"{path} is too short for {vectors}x{dim} vectors")


def check_files(directory: Path, manifest: dict) -> None:
    """The files match the manifest's checksums, and the index file is large enough for the shape the
    manifest claims (versions written before per-file checksums carry the index file's only)."""
    expected = dict(manifest.get("files") or {})
    if expected.setdefault(INDEX_FILE, manifest["checksum"]) != manifest["checksum"]:
        raise VerifyFailed(f"manifest in {directory} gives two checksums for {INDEX_FILE}")
    check_index_size(directory / INDEX_FILE, manifest)
    for name, digest in expected.items():
        if not _plain_relative(name):
            raise VerifyFailed(f"manifest in {directory} names a file outside the version: {name!r}")
        if sha256_file(directory / name) != digest:
            raise VerifyFailed(f"checksum mismatch: {directory / name} is not the file the manifest describes")


def load_npy(path: Path) -> np.ndarray:
    """A .npy array whose header is checked against the file's length before anything is allocated."""
    try:
        check_npy(path)
    except ValueError as exc:
        raise VerifyFailed(str(exc)) from exc
    return np.load(path, allow_pickle=False)


def read_index(directory: Path, manifest: dict) -> faiss.Index:
    """The version's FAISS index, memory-mapped (see LoadedVersion)."""
    flag = faiss.IO_FLAG_MMAP if manifest.get("kind") in IVF_KINDS else faiss.IO_FLAG_MMAP_IFC
    try:
        return faiss.read_index(str(directory / INDEX_FILE), flag)
    except RuntimeError as exc:
        raise VerifyFailed(f"{directory / INDEX_FILE} cannot be read: {str(exc)[-200:]}") from exc


def verify_version(directory: Path) -> dict:
    """Load what was written and check it against the manifest; returns the manifest."""
    manifest = read_manifest(directory)
    check_files(directory, manifest)
    index = read_index(directory, manifest)
    if index.ntotal != manifest["vectors"] or index.d != manifest["dim"]:
        raise VerifyFailed(f"index has {index.ntotal}x{index.d}, manifest says {manifest['vectors']}x{manifest['dim']}")
    _check_offsets(directory, load_npy(directory / OFFSETS_FILE), manifest)
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


def _check_offsets(directory: Path, offsets: np.ndarray, manifest: dict) -> None:
    if offsets.ndim != 1 or len(offsets) != manifest["vectors"] + 1 \
            or offsets[-1] != os.path.getsize(directory / CHUNKS_FILE):
        raise VerifyFailed(f"chunk store does not match the index in {directory}")


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
        self.manifest = read_manifest(directory)
        if int(self.manifest.get("version", version)) != version:
            raise VerifyFailed(f"{directory} holds version {self.manifest.get('version')}, not {version}")
        # Checked before FAISS or numpy read a length from any of the files.
        check_files(directory, self.manifest)
        # Memory-mapped: loads in milliseconds whatever the size, and a length field in the file that
        # claims more than the file holds is refused by FAISS instead of allocated; warm() faults the
        # pages in before the swap.
        self.index = read_index(directory, self.manifest)
        if self.manifest.get("kind") == KIND_IVF:
            faiss.extract_index_ivf(self.index).nprobe = int(self.manifest.get("nprobe", 32))
        if self.index.ntotal != self.manifest["vectors"] or self.index.d != self.manifest["dim"]:
            raise VerifyFailed(f"index in {directory} does not match its manifest")
        self.offsets = load_npy(directory / OFFSETS_FILE)
        _check_offsets(directory, self.offsets, self.manifest)
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

    def records_at(self, rows: list[int]) -> list[dict]:
        """The chunk records of `rows`, in that order."""
        return [self.record(i) for i in rows]

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
            # faiss's stubs omit the keyword constructor its Python layer adds to every SearchParameters.
            if ivf is None:
                scores, ids = self.index.search(
                    q, k, params=faiss.SearchParameters(sel=selector))  # type: ignore[call-arg]
            else:
                scores, ids = self.index.search(
                    q, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe))  # type: ignore[call-arg]
                if int((ids[0] >= 0).sum()) < k:
                    scores, ids = self.index.search(
                        q, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist))  # type: ignore[call-arg]
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
