"""Format 2: an index version is a manifest over immutable parts.

A **part** (`indexes/{collection}/parts/p{fence}/`) holds a block of rows written once, by the rebuild
whose fence names it: their FAISS index (`index.faiss`, local ids 0..rows-1: exact for small
collections, IVF-Flat on the collection's shared quantizer past the threshold), their chunk records and
documents table (`shared.index.parttables`, Arrow IPC, memory-mapped) and their keyword postings
(`shared.index.keywordpart`). `part.json` lists every file with its sha256, size and mtime.

A **version** (`indexes/{collection}/v{fence}/manifest.json`, format 2) lists the parts it uses, each at
an offset (global row = offset + local row) with the sha256 of its part.json, plus one deletion bitmap
per part that lost rows since it was written (`deleted-{part}.npy`, packed bits): a document replaced or
deleted by a later ingest keeps its rows in the old part, marked deleted there. A rebuild writes one new
part (the new segments' rows, plus the rows of small tail parts it folds in, see `shared.jobs.build`)
and the small per-version files; everything else is referenced. Garbage collection removes a part only
when no version directory on disk references it (`unreferenced_parts`).

**Checks.** A new part is hashed in full by the rebuild that writes it and again by verification. A
shared part is checked by the sha256 of its part.json (recorded in the manifest) and by each file's size
and mtime against what part.json recorded when it was written, so a part changed since is refused
without re-reading gigabytes. Each API process hashes a part in full the first time it opens it (and
again if a file's size or mtime changes); later versions reuse the opened part, so a load costs what
is new, and the pages are shared by every version that uses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from shared.index import keyword
from shared.index.compressed import VECTORS_FILE, MappedRows, rerank
from shared.index.ivf import list_views
from shared.index.keyword import KeywordVerifyFailed
from shared.index.keywordpart import KeywordPart, KeywordSearch, write_keyword_part
from shared.index.parttables import PartTables, TablesVerifyFailed, VersionDocuments, write_part_tables
from shared.index.vectorindex import (
    COMPRESSED_KINDS,
    INDEX_FILE,
    IVF_KINDS,
    KIND_FLAT,
    KIND_IVF,
    KIND_IVF_PQ,
    KIND_IVF_SQ,
    MANIFEST_FILE,
    MANIFEST_MAX_BYTES,
    LoadedVersion,
    VerifyFailed,
    check_index_size,
    kind_of,
    load_npy,
    read_index,
    read_manifest,
    sha256_file,
)
from shared.index.vectorindex import verify_version as verify_format1
from shared.settings import MAX_RERANK
from shared.storage import RecordSource, check_npy, reraise, write_npy, written

log = logging.getLogger(__name__)

FORMAT = 2
PARTS_DIR = "parts"
PART_FILE = "part.json"
PART_NAME = re.compile(r"p\d{1,18}")  # matched whole (fullmatch): p{fence}
FILE_NAME = re.compile(r"[a-z_]+\.(faiss|arrow|npy)")  # what a part holds, nothing else
KINDS = (KIND_FLAT, KIND_IVF, *COMPRESSED_KINDS)
# What each kind's index file holds per value, at least (PQ4: 4 bits for 4 values).
CODE_BYTES = {KIND_FLAT: 4, KIND_IVF: 4, KIND_IVF_SQ: 1, KIND_IVF_PQ: 1 / 8}
WHAT = "an index version"
TIE_SLACK = 16  # candidates past k each part returns, so near-ties at the k-th score are settled by row


def part_name(fence: int) -> str:
    return f"p{int(fence)}"


def is_format2(manifest: dict) -> bool:
    return manifest.get("format") == FORMAT


def deleted_file(part: str) -> str:
    return f"deleted-{part}.npy"


def _file_facts(path: Path) -> dict:
    stat = path.stat()
    return {"sha256": sha256_file(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_part(directory: Path, index: faiss.Index, records: RecordSource,
               segment_of: dict[str, int] | Callable[[str], int], segments: list[int], created_in: int,
               vectors_file: Path | None = None) -> dict:
    """Write a part's files into `directory` (a temporary one) and return its part.json. `records` are
    the chunk records in row order (row i is vector i of `index`). A compressed index comes with
    `vectors_file`, its rows' float vectors (.npy, written aside by the build), moved into the part."""
    if index.ntotal != len(records):
        raise ValueError(f"an index of {index.ntotal} rows for {len(records)} records")
    kind, rows, dim = kind_of(index), int(index.ntotal), int(index.d)
    if (kind in COMPRESSED_KINDS) != (vectors_file is not None):
        raise ValueError(f"a {kind} part {'needs' if kind in COMPRESSED_KINDS else 'takes no'} float vectors file")
    if vectors_file is not None:
        os.rename(vectors_file, directory / VECTORS_FILE)
    with written(directory / INDEX_FILE, WHAT) as fh:
        # faiss's stubs leave out its Python callback writer; through it a failed write raises OSError.
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    # Written: with the caller's reference handed over (`Built.hand_over`), the lists' memory goes now,
    # before the tables and postings are built.
    del index
    try:
        tables = write_part_tables(directory, records, segment_of)
        terms = write_keyword_part(directory, (keyword.keyword_text(rec) for rec in records))
        if tables["rows"] != rows or terms.get("rows", rows) != rows:
            raise ValueError(f"{tables['rows']} records read for an index of {rows} rows")
    except OSError as exc:
        reraise(exc, WHAT)
    files = {p.name: _file_facts(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != PART_FILE}
    meta = {"format": FORMAT, "rows": len(records), "dim": dim,
            "kind": kind,
            "segments": list(segments), "created_in": int(created_in), "tables": tables, "keyword": terms,
            "files": files, "written_at": time.time()}
    with written(directory / PART_FILE, WHAT) as fh:
        fh.write(json.dumps(meta, indent=1).encode())
    return meta


def read_part_meta(directory: Path, expected_sha256: str | None = None) -> dict:
    """A part's part.json, checked against the sha256 a version manifest recorded for it."""
    path = directory / PART_FILE
    try:
        if path.stat().st_size > MANIFEST_MAX_BYTES:
            raise VerifyFailed(f"{path} is larger than {MANIFEST_MAX_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise VerifyFailed(f"part {directory.name} cannot be read: {exc}") from exc
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise VerifyFailed(f"checksum mismatch: {path} is not the part the manifest references")
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise VerifyFailed(f"{path} is not JSON: {exc}") from exc
    _check_meta(path, meta)
    return meta


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_meta(path: Path, meta) -> None:
    """part.json has the shape a rebuild writes, names only files of a part, and claims no more rows
    than its index file can hold (rows x dim floats): every count read from it is bounded by the disk
    before anything is allocated from it."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict) \
            or not _is_count(meta.get("rows")) or not _is_count(meta.get("dim")) or not meta["dim"] \
            or meta.get("kind") not in KINDS or not _is_count(meta.get("created_in")):
        raise VerifyFailed(f"{path} is not a part description")
    for name, facts in meta["files"].items():
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            raise VerifyFailed(f"{path} names a file outside the part: {name!r}")
        if not isinstance(facts, dict) or not isinstance(facts.get("sha256"), str) \
                or not _is_count(facts.get("bytes")) or not _is_count(facts.get("mtime_ns")):
            raise VerifyFailed(f"{path} describes {name!r} without its checksum, size and mtime")
    index = meta["files"].get(INDEX_FILE)
    if index is None or meta["rows"] * meta["dim"] * CODE_BYTES[meta["kind"]] > index["bytes"]:
        raise VerifyFailed(f"{path} claims {meta['rows']}x{meta['dim']} vectors its index file cannot hold")
    vectors = meta["files"].get(VECTORS_FILE)
    if (meta["kind"] in COMPRESSED_KINDS) != (vectors is not None) \
            or vectors is not None and meta["rows"] * meta["dim"] * 2 > vectors["bytes"]:
        raise VerifyFailed(f"{path}: a {meta['kind']} part of {meta['rows']}x{meta['dim']} vectors "
                           f"{'without' if vectors is None else 'with'} a float vectors file that cannot hold them")


def check_part_unchanged(directory: Path, meta: dict) -> None:
    """A shared part's files are the ones part.json describes: same sizes and mtimes (no re-hash)."""
    for name, facts in meta["files"].items():
        try:
            stat = (directory / name).stat()
        except OSError as exc:
            raise VerifyFailed(f"part {directory.name} lost {name}: {exc}") from exc
        if stat.st_size != facts["bytes"] or stat.st_mtime_ns != facts["mtime_ns"]:
            raise VerifyFailed(f"part {directory.name}: {name} changed since it was written")


def check_part_hashes(directory: Path, meta: dict) -> None:
    """Every file of a part hashes to what part.json recorded (a full read)."""
    for name, facts in meta["files"].items():
        if sha256_file(directory / name) != facts["sha256"]:
            raise VerifyFailed(f"checksum mismatch: {directory / name} is not the file its part describes")


class LoadedPart:
    """A part opened for search: its index memory-mapped (a PQ4 index's block lists are read into
    memory: 48 B a row), its tables and keyword postings mapped. With
    `full`, everything inside is checked too (Arrow offsets, keyword postings): a full read, made where
    the part is read in full anyway (its first open in a process, a new part's verification)."""

    def __init__(self, directory: Path, meta: dict, full: bool):
        self.directory, self.meta = directory, meta
        self.rows = int(meta["rows"])
        index_meta = {"kind": meta["kind"], "vectors": self.rows, "dim": meta["dim"]}
        check_index_size(directory / INDEX_FILE, index_meta)
        self.index = read_index(directory, index_meta)
        if self.index.ntotal != self.rows or self.index.d != meta["dim"]:
            raise VerifyFailed(f"part {directory.name} holds {self.index.ntotal}x{self.index.d}, "
                               f"part.json says {self.rows}x{meta['dim']}")
        self.ivf = faiss.try_extract_index_ivf(self.index)
        # A compressed part's float rows, memory-mapped: searches re-rank their candidates from them.
        self.vectors = _float_vectors(directory / VECTORS_FILE, self.rows, meta["dim"]) \
            if meta["kind"] in COMPRESSED_KINDS else None
        try:
            self.tables = PartTables(directory, self.rows, validate=full)
            self.keyword = KeywordPart(directory, self.rows)
            if full:
                self.keyword.verify()
        except (TablesVerifyFailed, KeywordVerifyFailed, ValueError, OSError) as exc:
            raise VerifyFailed(f"part {directory.name}: {exc}") from exc
        self.signature = _signature(directory, meta)


def _float_vectors(path: Path, rows: int, dim: int) -> MappedRows:
    """A part's (rows, dim) float16 or float32 vectors, memory-mapped (`MappedRows` checks the header
    against the file) and checked against the part."""
    try:
        mapped = MappedRows(path)
    except (ValueError, OSError) as exc:
        raise VerifyFailed(f"{path}: {exc}") from exc
    if mapped.array.shape != (rows, dim):
        raise VerifyFailed(f"{path} holds {mapped.array.shape} {mapped.array.dtype} rows, the part {rows}x{dim}")
    return mapped


def _signature(directory: Path, meta: dict) -> tuple:
    return tuple((name, (directory / name).stat().st_size, (directory / name).stat().st_mtime_ns)
                 for name in sorted(meta["files"]))


class PartCache:
    """The parts this process has open, shared by every version that uses them: a part is hashed in
    full once per process (and again if its files change), then reused while any version holds it."""

    def __init__(self) -> None:
        self._parts: weakref.WeakValueDictionary[str, LoadedPart] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def open(self, directory: Path, expected_sha256: str) -> LoadedPart:
        meta = read_part_meta(directory, expected_sha256)
        key = f"{directory}:{expected_sha256}"
        with self._lock:
            part = self._parts.get(key)
        if part is not None and part.signature == _signature(directory, meta):
            return part
        check_part_hashes(directory, meta)
        part = LoadedPart(directory, meta, full=True)
        with self._lock:
            self._parts[key] = part
        return part


PARTS = PartCache()


@dataclass
class PartRef:
    """One part as a version uses it."""

    name: str
    offset: int
    rows: int
    sha256: str  # of its part.json
    deleted: np.ndarray | None  # bool per row, True = deleted in this version; None: none

    @property
    def live(self) -> int:
        return self.rows - (int(self.deleted.sum()) if self.deleted is not None else 0)

    def entry(self) -> dict:
        return {"name": self.name, "offset": self.offset, "rows": self.rows, "part_sha256": self.sha256,
                "deleted": self.rows - self.live,
                "deleted_file": deleted_file(self.name) if self.deleted is not None and self.deleted.any() else None}


def write_version_manifest(directory: Path, refs: list[PartRef], manifest: dict) -> dict:
    """Write a format-2 version's deletion bitmaps and manifest into `directory`; returns the manifest."""
    files = {}
    for ref in refs:
        entry = ref.entry()
        if entry["deleted_file"]:
            assert ref.deleted is not None
            with written(directory / entry["deleted_file"], WHAT) as fh:
                write_npy(fh, np.packbits(ref.deleted, bitorder="little"))
            files[entry["deleted_file"]] = sha256_file(directory / entry["deleted_file"])
    parts = [ref.entry() for ref in refs]
    full = {**manifest, "format": FORMAT, "parts": parts, "files": files, "checksum": _identity(parts, files),
            "rows": sum(ref.rows for ref in refs), "vectors": sum(ref.live for ref in refs)}
    with written(directory / MANIFEST_FILE, WHAT) as fh:
        fh.write(json.dumps(full, indent=1).encode())
    return full


def _deleted(directory: Path, entry: dict, rows: int, files: dict) -> np.ndarray | None:
    """A part's deletion bitmap in this version (None: nothing deleted): only the file named for that
    part, checksummed by the manifest, its length checked against the part's rows before it is read."""
    name = entry.get("deleted_file")
    if name is None:
        return None
    path = directory / deleted_file(entry["name"])
    if name != path.name or name not in files:
        raise VerifyFailed(f"manifest in {directory} names an unexpected bitmap {name!r}")
    try:
        shape, dtype = check_npy(path)
    except ValueError as exc:
        raise VerifyFailed(f"{path}: {exc}") from exc
    if dtype != np.uint8 or shape != ((rows + 7) // 8,):
        raise VerifyFailed(f"{path} does not cover the part's {rows} rows")
    deleted = np.unpackbits(load_npy(path), count=rows, bitorder="little").astype(bool)
    if int(deleted.sum()) != entry.get("deleted"):
        raise VerifyFailed(f"{path} marks {int(deleted.sum())} rows, the manifest {entry.get('deleted')}")
    return deleted


def _identity(parts: list[dict], files: dict) -> str:
    """A version's checksum: over the parts it references (each by its part.json's sha256) and its
    bitmaps' checksums, so changing any reference changes it."""
    return hashlib.sha256(json.dumps([parts, files], sort_keys=True).encode()).hexdigest()


def part_refs(version_dir: Path, manifest: dict) -> list[PartRef]:
    """The parts a format-2 manifest references, in row order, their deletion bitmaps read and checked
    (the bitmaps against the manifest's checksums, the references against its own; the parts
    themselves are not opened)."""
    if _identity(manifest.get("parts") or [], manifest.get("files") or {}) != manifest.get("checksum"):
        raise VerifyFailed(f"checksum mismatch: the manifest in {version_dir} does not match its parts list")
    for name, digest in (manifest.get("files") or {}).items():
        if not re.fullmatch(r"deleted-p\d+\.npy", name) or sha256_file(version_dir / name) != digest:
            raise VerifyFailed(f"checksum mismatch: {version_dir / name} is not the file the manifest describes")
    files = manifest.get("files") or {}
    refs, offset = [], 0
    for entry in manifest.get("parts") or []:
        if not isinstance(entry, dict) or not PART_NAME.fullmatch(str(entry.get("name"))) \
                or entry.get("offset") != offset or not isinstance(entry.get("part_sha256"), str):
            raise VerifyFailed(f"manifest in {version_dir} references a part out of order: {entry!r:.200}")
        # The rows come from part.json (bounded there by the index file's size), not from the manifest alone.
        rows = read_part_meta(parts_dir(version_dir) / entry["name"], entry["part_sha256"])["rows"]
        if entry.get("rows") != rows:
            raise VerifyFailed(f"manifest in {version_dir} gives part {entry['name']} {entry.get('rows')} rows, "
                               f"its part.json {rows}")
        refs.append(PartRef(entry["name"], offset, rows, entry["part_sha256"],
                            _deleted(version_dir, entry, rows, files)))
        offset += rows
    if sum(ref.live for ref in refs) != int(manifest["vectors"]):
        raise VerifyFailed(f"manifest in {version_dir} counts {manifest['vectors']} live rows, its parts "
                           f"{sum(ref.live for ref in refs)}")
    return refs


def parts_dir(version_dir: Path) -> Path:
    return version_dir.parent / PARTS_DIR


def verify_parts_version(version_dir: Path, manifest: dict) -> list[PartRef]:
    """The worker's check of a written format-2 version: parts this version created are hashed in full
    and opened; parts it shares with earlier versions are checked by their part.json checksum and their
    files' sizes and mtimes (see the module docstring)."""
    refs = part_refs(version_dir, manifest)
    for ref in refs:
        directory = parts_dir(version_dir) / ref.name
        meta = read_part_meta(directory, ref.sha256)
        if int(meta["rows"]) != ref.rows or meta["dim"] != manifest["dim"]:
            raise VerifyFailed(f"part {ref.name} holds {meta['rows']}x{meta['dim']}, the manifest says "
                               f"{ref.rows}x{manifest['dim']}")
        if meta["created_in"] == manifest["version"]:
            check_part_hashes(directory, meta)
            LoadedPart(directory, meta, full=True)
        else:
            check_part_unchanged(directory, meta)
    return refs


def count_by_type(version_dir: Path, refs: list[PartRef]) -> dict[str, dict[str, int]]:
    """type -> {"documents": n, "chunks": m} over a version's live documents."""
    parts = open_parts(version_dir, refs)
    return VersionDocuments([(p.tables, r.offset, r.deleted) for p, r in zip(parts, refs, strict=True)],
                            sum(r.rows for r in refs)).count_by_type()


def referenced_parts(indexes_dir: Path) -> set[str] | None:
    """The parts referenced by any version directory under `indexes_dir`; None when a manifest cannot
    be read (then no part may be collected)."""
    names: set[str] = set()
    for child in indexes_dir.iterdir() if indexes_dir.is_dir() else []:
        if not re.fullmatch(r"v\d+", child.name):
            continue
        try:
            names.update(str(p["name"]) for p in read_manifest(child).get("parts") or [])
        except (OSError, VerifyFailed, KeyError, TypeError) as exc:
            log.warning("event=parts.collect_skipped version=%s error=%r: no part is collected", child, str(exc))
            return None
    return names


def unreferenced_parts(indexes_dir: Path, newest_published: int) -> list[Path]:
    """Parts no version references, older than anything a build in flight may be writing."""
    referenced = referenced_parts(indexes_dir)
    folder = indexes_dir / PARTS_DIR
    if referenced is None or not folder.is_dir():
        return []
    return [child for child in sorted(folder.iterdir()) if PART_NAME.fullmatch(child.name)
            and child.name not in referenced and int(child.name[1:]) <= newest_published]


class PartsVersion:
    """A format-2 version opened for search: the same reading interface as a format-1 `LoadedVersion`
    (`nearest`, `keyword`, `documents`, `record`, `records`, `warm`), over its parts. Rows are global;
    deleted rows never answer."""

    def __init__(self, directory: Path, version: int, manifest: dict, cache: PartCache = PARTS):
        started = time.perf_counter()
        self.directory, self.version, self.manifest = directory, version, manifest
        self.refs = part_refs(directory, manifest)
        self.parts = [cache.open(parts_dir(directory) / ref.name, ref.sha256) for ref in self.refs]
        for ref, part in zip(self.refs, self.parts, strict=True):
            if part.rows != ref.rows or part.meta["dim"] != manifest["dim"]:
                raise VerifyFailed(f"part {ref.name} does not match the manifest of {directory}")
        self.total_rows = sum(ref.rows for ref in self.refs)
        self.offsets = np.array([ref.offset for ref in self.refs], dtype=np.int64)
        self.nprobe = int(manifest.get("nprobe", 1))
        # Candidates per hit a compressed part re-ranks; a manifest cannot make every search read a part whole.
        self.rerank = min(MAX_RERANK, max(1, int(manifest.get("rerank", 1))))
        # What every unfiltered search needs of the deletions, computed once per version, not per query.
        self._live = [None if ref.deleted is None else ~ref.deleted for ref in self.refs]
        self._live_selectors = [_selector(live) for live in self._live]
        layout = [(part, ref.offset, ref.deleted) for part, ref in zip(self.parts, self.refs, strict=True)]
        self.keyword = KeywordSearch([(p.keyword, o, d) for p, o, d in layout], self.total_rows)
        self.documents = VersionDocuments([(p.tables, o, d) for p, o, d in layout], self.total_rows)
        self.load_seconds = time.perf_counter() - started

    @property
    def vectors(self) -> int:
        return int(self.manifest["vectors"])

    def record(self, row: int) -> dict:
        if not 0 <= row < self.total_rows:
            raise IndexError(row)
        return self.documents.record(row)

    def records(self, rows: list[list[int]]) -> list[dict]:
        return self.documents.records(rows)

    def records_at(self, rows: list[int]) -> list[dict]:
        """The records of `rows` (a search's hits), in that order; IndexError for a row in no part."""
        return self.documents.records_at(rows)

    def _eligible(self, i: int, allowed: np.ndarray) -> np.ndarray:
        """The rows of part i a filtered search may return."""
        ref, live = self.refs[i], self._live[i]
        mask = allowed[ref.offset:ref.offset + ref.rows]
        return mask if live is None else mask & live

    def nearest(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, cosine) of the `k` nearest live rows (among `allowed`, a boolean mask over rows), best
        first: each part searched with the same parameters, the answers merged. An IVF search that finds
        fewer than k in its probed lists probes every list before it gives up."""
        if k <= 0 or not self.vectors:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if allowed is None:
            masks: list[np.ndarray | None] = list(self._live)
            k = min(k, self.vectors)
        else:
            masks = [self._eligible(i, allowed) for i in range(len(self.parts))]
            k = min(k, sum(int(np.count_nonzero(mask)) for mask in masks if mask is not None))
        if k <= 0:
            return []
        found = self._search(q, k, masks, self.nprobe, allowed is None)
        if len(found) < k and any(part.ivf is not None for part in self.parts):
            found = self._search(q, k, masks, max(part.ivf.nlist for part in self.parts if part.ivf is not None))
        return found

    def _search(self, q: np.ndarray, k: int, masks: list[np.ndarray | None], nprobe: int,
                unfiltered: bool = False) -> list[tuple[int, float]]:
        """Each part's best k, merged: best score first, scores equal to 1e-6 in row order. FAISS's own
        choice among near-equal scores follows rounding noise that differs between code paths (with or
        without a selector), so each part is asked for TIE_SLACK more and the order is settled here: the
        answer does not depend on how the rows are split into parts."""
        scores, rows = [], []
        for i, (part, ref, mask) in enumerate(zip(self.parts, self.refs, masks, strict=True)):
            if not part.rows or mask is not None and not mask.any():
                continue
            # The bitmap must outlive the search; an unfiltered search reuses the version's own.
            selector, _bits = self._live_selectors[i] if unfiltered else _selector(mask)
            params = _params(part, selector, nprobe)
            if part.vectors is None:
                found_scores, found = part.index.search(q, min(k + TIE_SLACK, part.rows), params=params)
                keep = found[0] >= 0
                scores.append(found_scores[0][keep])
                rows.append(found[0][keep] + ref.offset)
                continue
            _, found = part.index.search(q, min(self.rerank * k + TIE_SLACK, part.rows), params=params)
            exact, best = rerank(part.vectors.take, q[0], found[0], k + TIE_SLACK)
            scores.append(exact)
            rows.append(best + ref.offset)
        if not scores:
            return []
        all_scores, all_rows = np.concatenate(scores), np.concatenate(rows)
        order = np.lexsort((all_rows, -np.round(all_scores, 6)))[:k]
        return [(int(all_rows[i]), float(all_scores[i])) for i in order]

    def warm(self, searches: int = 16) -> None:
        """Searches touch every part's pages before any request does."""
        if not self.total_rows:
            return
        rng = np.random.default_rng(0)
        for _ in range(searches if self.manifest.get("kind") in IVF_KINDS else 1):
            q = rng.standard_normal(int(self.manifest["dim"])).astype(np.float32)
            self.nearest(q / np.linalg.norm(q), 10)
        self.keyword.warm()


ServedVersion = LoadedVersion | PartsVersion  # what an API process serves, format 1 or 2


def _selector(mask: np.ndarray | None) -> tuple[faiss.IDSelector | None, np.ndarray | None]:
    """A FAISS selector of the rows `mask` keeps (None: every row), and the bitmap it points into
    (FAISS keeps only the pointer: whoever uses the selector holds the array too)."""
    if mask is None:
        return None, None
    bitmap = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap  # its length in bytes


def _params(part: LoadedPart, selector: faiss.IDSelector | None, nprobe: int) -> faiss.SearchParameters | None:
    """FAISS search parameters for one part."""
    # faiss's stubs omit the keyword constructor its Python layer adds to every SearchParameters.
    if part.ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(nprobe, part.ivf.nlist))  # type: ignore[call-arg]
    return faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]


def part_vectors(part: LoadedPart) -> np.ndarray:
    """Every vector of a part, in row order (rows a fold carries into a new part)."""
    if part.vectors is not None:
        return np.array(part.vectors.array, dtype=np.float32)
    if part.ivf is None:
        return part.index.reconstruct_n(0, part.rows)
    out = np.zeros((part.rows, part.index.d), dtype=np.float32)
    for list_no in range(part.ivf.nlist):
        ids, vectors = list_views(part.ivf, list_no)
        if len(ids):
            out[ids] = vectors
    return out


def open_parts(version_dir: Path, refs: Iterable[PartRef]) -> list[LoadedPart]:
    """The parts of a version, opened without the process cache's full hash (a rebuild reading the
    published version it starts from checks them by part.json checksum and file sizes and mtimes)."""
    out = []
    for ref in refs:
        directory = parts_dir(version_dir) / ref.name
        meta = read_part_meta(directory, ref.sha256)
        check_part_unchanged(directory, meta)
        out.append(LoadedPart(directory, meta, full=False))
    return out


def open_version(directory: Path, version: int) -> ServedVersion:
    """A version opened for search, whichever format wrote it (format 1: `LoadedVersion`)."""
    manifest = read_manifest(directory)
    if int(manifest.get("version", version)) != version:
        raise VerifyFailed(f"{directory} holds version {manifest.get('version')}, not {version}")
    return PartsVersion(directory, version, manifest) if is_format2(manifest) else LoadedVersion(directory, version)


def verify_version(directory: Path) -> dict:
    """Check a written version, whichever format wrote it; returns its manifest."""
    manifest = read_manifest(directory)
    if not is_format2(manifest):
        return verify_format1(directory)
    verify_parts_version(directory, manifest)
    return manifest

