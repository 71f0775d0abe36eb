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
from shared.index.keyword import KeywordVerifyFailed
from shared.index.keywordpart import KeywordPart, KeywordSearch, write_keyword_part
from shared.index.parttables import PartTables, TablesVerifyFailed, VersionDocuments, write_part_tables
from shared.index.vectorindex import (
    INDEX_FILE,
    KIND_IVF,
    MANIFEST_FILE,
    MANIFEST_MAX_BYTES,
    LoadedVersion,
    VerifyFailed,
    check_index_size,
    read_index,
    sha256_file,
)
from shared.storage import reraise, write_npy, written

FORMAT = 2
PARTS_DIR = "parts"
PART_FILE = "part.json"
PART_NAME = re.compile(r"^p\d+$")
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


def write_part(directory: Path, index: faiss.Index, records: list[dict],
               segment_of: dict[str, int] | Callable[[str], int], segments: list[int], created_in: int) -> dict:
    """Write a part's files into `directory` (a temporary one) and return its part.json. `records` are
    the chunk records in row order (row i is vector i of `index`)."""
    if index.ntotal != len(records):
        raise ValueError(f"an index of {index.ntotal} rows for {len(records)} records")
    with written(directory / INDEX_FILE, WHAT) as fh:
        # faiss's stubs leave out its Python callback writer; through it a failed write raises OSError.
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    try:
        tables = write_part_tables(directory, records, segment_of)
        terms = write_keyword_part(directory, (keyword.keyword_text(rec) for rec in records))
    except OSError as exc:
        reraise(exc, WHAT)
    files = {p.name: _file_facts(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != PART_FILE}
    meta = {"format": FORMAT, "rows": len(records), "dim": int(index.d),
            "kind": KIND_IVF if faiss.try_extract_index_ivf(index) is not None else "flat-ip",
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise VerifyFailed(f"{path} is not a part description")
    for name in meta["files"]:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise VerifyFailed(f"{path} names a file outside the part: {name!r}")
    return meta


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
    """A part opened for search: its index memory-mapped, its tables and keyword postings mapped."""

    def __init__(self, directory: Path, meta: dict, hashed: bool):
        self.directory, self.meta, self.hashed = directory, meta, hashed
        self.rows = int(meta["rows"])
        index_meta = {"kind": meta["kind"], "vectors": self.rows, "dim": meta["dim"]}
        check_index_size(directory / INDEX_FILE, index_meta)
        self.index = read_index(directory, index_meta)
        if self.index.ntotal != self.rows or self.index.d != meta["dim"]:
            raise VerifyFailed(f"part {directory.name} holds {self.index.ntotal}x{self.index.d}, "
                               f"part.json says {self.rows}x{meta['dim']}")
        self.ivf = faiss.try_extract_index_ivf(self.index)
        try:
            self.tables = PartTables(directory, self.rows)
            self.keyword = KeywordPart(directory, self.rows)
        except (TablesVerifyFailed, ValueError, OSError) as exc:
            raise VerifyFailed(f"part {directory.name}: {exc}") from exc
        self.signature = _signature(directory, meta)


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
        part = LoadedPart(directory, meta, hashed=True)
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


def _deleted(directory: Path, entry: dict) -> np.ndarray | None:
    from shared.index.vectorindex import load_npy

    if not entry.get("deleted_file"):
        return None
    packed = load_npy(directory / entry["deleted_file"])
    rows = int(entry["rows"])
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != (rows + 7) // 8:
        raise VerifyFailed(f"{entry['deleted_file']} does not cover {rows} rows")
    deleted = np.unpackbits(packed, count=rows, bitorder="little").astype(bool)
    if int(deleted.sum()) != int(entry["deleted"]):
        raise VerifyFailed(f"{entry['deleted_file']} marks {int(deleted.sum())} rows, the manifest {entry['deleted']}")
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
    refs, offset = [], 0
    for entry in manifest.get("parts") or []:
        if not PART_NAME.match(str(entry.get("name"))) or int(entry["offset"]) != offset:
            raise VerifyFailed(f"manifest in {version_dir} references a part out of order: {entry.get('name')!r}")
        refs.append(PartRef(entry["name"], offset, int(entry["rows"]), str(entry["part_sha256"]),
                            _deleted(version_dir, entry)))
        offset += int(entry["rows"])
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
            try:
                LoadedPart(directory, meta, hashed=True).keyword.verify()  # postings well formed, not just sized
            except KeywordVerifyFailed as exc:
                raise VerifyFailed(f"part {ref.name}: {exc}") from exc
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
            manifest = json.loads((child / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        names.update(str(p["name"]) for p in manifest.get("parts") or [])
    return names


def unreferenced_parts(indexes_dir: Path, newest_published: int) -> list[Path]:
    """Parts no version references, older than anything a build in flight may be writing."""
    referenced = referenced_parts(indexes_dir)
    folder = indexes_dir / PARTS_DIR
    if referenced is None or not folder.is_dir():
        return []
    return [child for child in sorted(folder.iterdir()) if PART_NAME.match(child.name)
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
        layout = [(part, ref.offset, ref.deleted) for part, ref in zip(self.parts, self.refs, strict=True)]
        self.keyword = KeywordSearch([(p.keyword, o, d) for p, o, d in layout], self.total_rows)
        self.documents = VersionDocuments([(p.tables, o, d) for p, o, d in layout], self.total_rows)
        self.load_seconds = time.perf_counter() - started

    @property
    def vectors(self) -> int:
        return int(self.manifest["vectors"])

    def _part_of(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, side="right")) - 1

    def record(self, row: int) -> dict:
        i = self._part_of(row)
        if i < 0 or row >= self.total_rows:
            raise IndexError(row)
        return self.documents.record(row)

    def records(self, rows: list[list[int]]) -> list[dict]:
        return self.documents.records(rows)

    def _eligible(self, i: int, allowed: np.ndarray | None) -> np.ndarray | None:
        """The rows of part i a search may return (None: all of them)."""
        ref = self.refs[i]
        mask = None if allowed is None else allowed[ref.offset:ref.offset + ref.rows]
        if ref.deleted is not None:
            mask = ~ref.deleted if mask is None else mask & ~ref.deleted
        return mask

    def nearest(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, cosine) of the `k` nearest live rows (among `allowed`, a boolean mask over rows), best
        first: each part searched with the same parameters, the answers merged. An IVF search that finds
        fewer than k in its probed lists probes every list before it gives up."""
        if k <= 0 or not self.vectors:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        masks = [self._eligible(i, allowed) for i in range(len(self.parts))]
        eligible = sum(part.rows if mask is None else int(mask.sum()) for part, mask in zip(self.parts, masks,
                                                                                            strict=True))
        k = min(k, eligible)
        if k <= 0:
            return []
        found = self._search(q, k, masks, self.nprobe)
        if len(found) < k and any(part.ivf is not None for part in self.parts):
            found = self._search(q, k, masks, max(part.ivf.nlist for part in self.parts if part.ivf is not None))
        return found

    def _search(self, q: np.ndarray, k: int, masks: list[np.ndarray | None], nprobe: int) -> list[tuple[int, float]]:
        """Each part's best k, merged: best score first, scores equal to 1e-6 in row order. FAISS's own
        choice among near-equal scores follows rounding noise that differs between code paths (with or
        without a selector), so each part is asked for TIE_SLACK more and the order is settled here: the
        answer does not depend on how the rows are split into parts."""
        scores, rows = [], []
        for part, ref, mask in zip(self.parts, self.refs, masks, strict=True):
            if mask is not None and not mask.any():
                continue
            params, _bits = _params(part, mask, nprobe)  # the bitmap must outlive the search
            found_scores, found = part.index.search(q, min(k + TIE_SLACK, part.rows), params=params)
            keep = found[0] >= 0
            scores.append(found_scores[0][keep])
            rows.append(found[0][keep] + ref.offset)
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
        for _ in range(searches if self.manifest.get("kind") == KIND_IVF else 1):
            q = rng.standard_normal(int(self.manifest["dim"])).astype(np.float32)
            self.nearest(q / np.linalg.norm(q), 10)
        self.keyword.warm()


ServedVersion = LoadedVersion | PartsVersion  # what an API process serves, format 1 or 2


def _params(part: LoadedPart, mask: np.ndarray | None,
            nprobe: int) -> tuple[faiss.SearchParameters | None, np.ndarray | None]:
    """FAISS search parameters for one part, and the bitmap its selector points into (FAISS keeps only
    the pointer: the caller holds the array until the search returns)."""
    selector, bitmap = None, None
    if mask is not None:
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
    # faiss's stubs omit the keyword constructor its Python layer adds to every SearchParameters.
    if part.ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(nprobe, part.ivf.nlist)), bitmap  # type: ignore[call-arg]
    return (faiss.SearchParameters(sel=selector) if selector is not None else None), bitmap  # type: ignore[call-arg]


def part_vectors(part: LoadedPart) -> np.ndarray:
    """Every vector of a part, in row order (rows a fold carries into a new part)."""
    from shared.index.ivf import _list_views

    if part.ivf is None:
        return part.index.reconstruct_n(0, part.rows)
    out = np.zeros((part.rows, part.index.d), dtype=np.float32)
    for list_no in range(part.ivf.nlist):
        ids, vectors = _list_views(part.ivf, list_no)
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
        out.append(LoadedPart(directory, meta, hashed=False))
    return out


def part_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) if directory.is_dir() else 0


def disk_bytes(version_dir: Path) -> int:
    """Bytes of a version directory (manifest and bitmaps) and of every part it references."""
    manifest = json.loads((version_dir / MANIFEST_FILE).read_bytes())
    own = sum(f.stat().st_size for f in version_dir.iterdir() if f.is_file())
    return own + sum(part_bytes(parts_dir(version_dir) / p["name"]) for p in manifest.get("parts") or [])


def open_version(directory: Path, version: int) -> ServedVersion:
    """A version opened for search, whichever format wrote it (format 1: `LoadedVersion`)."""
    from shared.index.vectorindex import read_manifest

    manifest = read_manifest(directory)
    if int(manifest.get("version", version)) != version:
        raise VerifyFailed(f"{directory} holds version {manifest.get('version')}, not {version}")
    return PartsVersion(directory, version, manifest) if is_format2(manifest) else LoadedVersion(directory, version)


def verify_version(directory: Path) -> dict:
    """Check a written version, whichever format wrote it; returns its manifest."""
    from shared.index import vectorindex

    manifest = vectorindex.read_manifest(directory)
    if not is_format2(manifest):
        return vectorindex.verify_version(directory)
    verify_parts_version(directory, manifest)
    return manifest


def write_single_part_version(indexes_dir: Path, fence: int, index: faiss.Index, records: list[dict],
                              manifest: dict, segment_of: dict[str, int] | None = None) -> Path:
    """Write a whole format-2 version of one part (p{fence} and v{fence} under `indexes_dir`) from an
    index and its records, without a rebuild: what tests and benchmarks build versions with. Returns
    the version directory."""
    name = part_name(fence)
    part_dir, version_dir = indexes_dir / PARTS_DIR / name, indexes_dir / f"v{int(fence)}"
    part_dir.mkdir(parents=True)
    write_part(part_dir, index, records, segment_of if segment_of is not None else (lambda _doc: 0), [], fence)
    version_dir.mkdir()
    ref = PartRef(name, 0, len(records), sha256_file(part_dir / PART_FILE), None)
    write_version_manifest(version_dir, [ref], {"version": int(fence), "dim": int(index.d),
                                                "documents": len({r["doc_id"] for r in records}), **manifest})
    return version_dir
