"""The data dir: where staged batches, immutable segments and index versions live.

Layout (under `data_dir`):
    staging/{job_id}.jsonl          a submitted batch, deleted once ingested
    segments/{collection}/{seq}/    immutable: chunks.jsonl, vectors.npy, meta.json
    indexes/{collection}/v{version}/ immutable: manifest.json over parts, deletion bitmaps (format 2;
                                    format 1 held index.faiss, chunks.jsonl, offsets.npy, ...)
    indexes/{collection}/parts/p{fence}/ immutable: a block of rows shared by every version using it
    sources/{collection}.json       the collection's source records (Redis keeps them too; recover reads these)
    snapshots/{collection}/{id}.tar one snapshot archive, with {id}.tar.sha256 beside it (`shared.jobs.snapshots`)
    layout.json                     the layout this data dir is written in (shared/jobs/upgrade.py)
    cache/embeddings/               (model, content hash) -> vector, bounded, shared by workers
    models/{variant}/model.onnx     the ONNX exports of the embedding model, made once on first use

Everything is written under a temporary name, fsynced, and renamed into place, so a reader never sees
a half-written file or directory; every write, flush, fsync and close is checked, and what a failed
write leaves behind is removed at once. A full volume raises `StorageFull` (retryable: the same request
can succeed once space is freed). Names come only from validated collection names, hex job ids and
integers, and every path is checked to stay inside the data dir.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn, Protocol

import numpy as np

from shared.names import is_collection_name, is_job_id, is_snapshot_id

TMP_PREFIX = ".tmp-"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class UnsafePath(ValueError):
    pass


class StorageFull(OSError):
    """The data volume has no room for a write (or the quota is used up). Nothing half-written stays."""

    def __init__(self, what: str, cause: OSError):
        super().__init__(cause.errno, f"no space left on the data volume while writing {what} "
                                      f"({cause.strerror or cause}); free space on it, then retry")
        self.what = what

    def __str__(self) -> str:
        return self.strerror or ""  # always set: __init__ passes a message


def reraise(exc: BaseException, what: str) -> NoReturn:
    """Raise `exc` again, as StorageFull when it says the volume is full (call from an except block)."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageFull) and exc.errno in DISK_FULL:
        raise StorageFull(what, exc) from exc
    raise exc


class _Stream:
    """A plain writable for numpy: given a real file, numpy writes with C stdio and reports a short write
    without errno ("N requested and M written"); through this it calls write() and gets the OSError."""

    def __init__(self, fh):
        self.write = fh.write


def write_npy(fh, array: np.ndarray) -> None:
    np.lib.format.write_array(_Stream(fh), np.ascontiguousarray(array), allow_pickle=False)


class RecordSource(Protocol):
    """Chunk records in row order that know how many they are and can be read more than once (a list, or
    records read again from their segments each time: `shared.jobs.merge.LiveRecords`)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[dict]: ...


class NpyWriter:
    """A .npy file written slice by slice, its header first (the rows are known): (rows, dim) of `dtype`
    (float32 unless told), or with `dim` None a one-dimensional array of it."""

    def __init__(self, fh, rows: int, dim: int | None, dtype: np.dtype | type = np.float32):
        self.fh, self.rows, self.dim, self.written = fh, rows, dim, 0
        self.dtype = np.dtype(dtype)
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                  "fortran_order": False,
                                                  "shape": (rows,) if dim is None else (rows, dim)})

    def add(self, chunk: np.ndarray) -> None:
        if self.written + len(chunk) > self.rows:
            raise ValueError(f"more than the {self.rows} rows the header announced")
        self.fh.write(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())
        self.written += len(chunk)

    def close(self) -> None:
        if self.written != self.rows:
            raise ValueError(f"{self.written} rows written of the {self.rows} the header announced")


def check_npy(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file, read from its header, which must describe exactly the bytes the file
    holds: a forged shape is refused (ValueError) before numpy allocates or maps anything for it."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(fh)
        except ValueError as exc:
            raise ValueError(f"{path} is not a .npy file: {exc}") from exc
        data_start = fh.tell()
    if dtype.hasobject or fortran:
        raise ValueError(f"{path} holds an array Swapline never writes")
    if data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
        raise ValueError(f"{path} claims shape {shape} of {dtype}, which does not match its {size} bytes")
    return shape, dtype


@contextlib.contextmanager
def written(path: Path, what: str):
    """Write one file in place of `path` through the binary handle this yields: the data is flushed and
    fsynced and the handle closed (each checked) before the block ends. On any failure the partial file
    is removed and a full volume raises StorageFull."""
    try:
        with open(path, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        path.unlink(missing_ok=True)
        reraise(exc, what)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file in a directory and its subdirectories (a version's keyword/), then each directory."""
    for child in path.iterdir():
        if child.is_dir():
            fsync_tree(child)
        elif child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


class Storage:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir).resolve()

    # paths

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise UnsafePath(str(path))
        return resolved

    @staticmethod
    def check_collection(name: str) -> str:
        if not is_collection_name(name):
            raise UnsafePath(f"invalid collection name {name!r}")
        return name

    def staging_path(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise UnsafePath(f"invalid job id {job_id!r}")
        return self._inside(self.root / "staging" / f"{job_id}.jsonl")

    def segments_dir(self, collection: str) -> Path:
        return self._inside(self.root / "segments" / self.check_collection(collection))

    def segment_dir(self, collection: str, seq: int) -> Path:
        return self._inside(self.segments_dir(collection) / f"{int(seq):010d}")

    def embedding_cache_dir(self) -> Path:
        return self._inside(self.root / "cache" / "embeddings")

    def models_dir(self) -> Path:
        """Model files made on this machine (ONNX exports), one folder per variant."""
        return self._inside(self.root / "models")

    def indexes_dir(self, collection: str) -> Path:
        return self._inside(self.root / "indexes" / self.check_collection(collection))

    def version_dir(self, collection: str, version: int) -> Path:
        return self._inside(self.indexes_dir(collection) / f"v{int(version)}")

    def part_dir(self, collection: str, name: str) -> Path:
        """An immutable part of a collection's index versions (`shared.index.parts`); `name` is p{fence}."""
        if not re.fullmatch(r"p\d+", name):
            raise UnsafePath(f"invalid part name {name!r}")
        return self._inside(self.indexes_dir(collection) / "parts" / name)

    def sources_file(self, collection: str) -> Path:
        return self._inside(self.root / "sources" / f"{self.check_collection(collection)}.json")

    def config_file(self, collection: str) -> Path:
        return self._inside(self.root / "config" / f"{self.check_collection(collection)}.json")

    def snapshots_dir(self, collection: str) -> Path:
        return self._inside(self.root / "snapshots" / self.check_collection(collection))

    def snapshot_path(self, collection: str, snapshot_id: str) -> Path:
        if not is_snapshot_id(snapshot_id):
            raise UnsafePath(f"invalid snapshot id {snapshot_id!r}")
        return self._inside(self.snapshots_dir(collection) / f"{snapshot_id}.tar")

    def upload_path(self, job_id: str) -> Path:
        """An uploaded snapshot archive waiting for its restore job (the sweep removes it once the job ended)."""
        if not is_job_id(job_id):
            raise UnsafePath(f"invalid job id {job_id!r}")
        return self._inside(self.root / "staging" / f"{job_id}.tar")

    def restoring_dir(self) -> Path:
        """Where a restore extracts an archive aside before renaming its folders into place."""
        return self._inside(self.root / "restoring")

    def collections_on_disk(self) -> list[str]:
        """Names with a segments/ or indexes/ folder (temporary and invalid names left out)."""
        names: set[str] = set()
        for top in ("segments", "indexes"):
            folder = self.root / top
            if folder.is_dir():
                names.update(child.name for child in folder.iterdir()
                             if child.is_dir() and is_collection_name(child.name))
        return sorted(names)

    def resolve_relative(self, relative: str) -> Path:
        """A path stored in Redis (relative to the data dir), checked to stay inside it."""
        return self._inside(self.root / relative)

    def relative(self, path: Path) -> str:
        return str(self._inside(path).relative_to(self.root))

    def temp_dir(self, parent: Path, label: str) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        path = parent / f"{TMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def aside(self, final: Path, what: str) -> Iterator[Path]:
        """Build a directory aside, then switch: yields a fresh temporary directory beside `final` for
        the block to fill (and check); when the block ends, it is fsynced and renamed to `final`. If
        the block or the switch fails, the temporary directory is removed and the error raised again
        (as StorageFull, naming `what`, when the volume is full): nothing half-written keeps a final name."""
        tmp, renamed = None, False
        try:
            tmp = self.temp_dir(final.parent, final.name)
            yield tmp
            fsync_tree(tmp)
            os.rename(tmp, final)  # fails if `final` exists: nothing is rewritten in place
            renamed = True
            fsync_dir(final.parent)
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(final if renamed else tmp, ignore_errors=True)
            reraise(exc, what)

    def layout_path(self) -> Path:
        """The data dir's layout marker (`shared.jobs.upgrade`)."""
        return self._inside(self.root / "layout.json")

    def write_file(self, path: Path, data: bytes, what: str) -> None:
        """Write a small file (inside the data dir) atomically: under a temporary name, fsynced, renamed
        over the old one, so a reader sees the old content or the new, never a mix."""
        path = self._inside(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reraise(exc, what)
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
        with written(tmp, what) as fh:
            fh.write(data)
        try:
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            reraise(exc, what)

    def write_stream(self, path: Path, stream, length: int, what: str, chunk: int = 1 << 20) -> None:
        """Copy exactly `length` bytes of `stream` (an upload) to `path`, fsynced; ValueError when the
        stream ends early (nothing stays)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reraise(exc, what)
        with written(path, what) as fh:
            left = length
            while left > 0:
                data = stream.read(min(chunk, left))
                if not data:
                    raise ValueError(f"the body ended after {length - left} of {length} bytes")
                fh.write(data)
                left -= len(data)

    # sources kept beside Redis

    def write_sources(self, collection: str, records: list[dict]) -> None:
        """The collection's source records (ids, folders, patterns), so recover can re-create them."""
        path = self.sources_file(collection)
        if not records:
            self.remove_sources(collection)
            return
        self.write_file(path, json.dumps({"collection": collection, "sources": records}, indent=1).encode(),
                        "the source records")

    def read_sources(self, collection: str) -> list[dict]:
        """The records `write_sources` kept ([] when none, or when the file is not one it wrote)."""
        try:
            data = json.loads(self.sources_file(collection).read_text())
        except (OSError, ValueError):
            return []
        records = data.get("sources") if isinstance(data, dict) else None
        return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

    def remove_sources(self, collection: str) -> None:
        path = self.sources_file(collection)
        if path.exists():
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)

    def write_config(self, collection: str, config: dict) -> None:
        """The collection's settings kept beside its data (canaries, default mode), so recover keeps
        them; an empty `config` removes the file."""
        if not config:
            self.remove_config(collection)
            return
        data = json.dumps({"collection": collection, **config}, indent=1).encode()
        self.write_file(self.config_file(collection), data, "the collection's settings")

    def read_config(self, collection: str) -> dict:
        """What `write_config` kept ({} when nothing, or a file it did not write)."""
        try:
            data = json.loads(self.config_file(collection).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("collection") == collection else {}

    def remove_config(self, collection: str) -> None:
        self.config_file(collection).unlink(missing_ok=True)

    # staging

    def write_staging(self, job_id: str, documents: Iterable[dict]) -> Path:
        """Stage a batch; raises StorageFull (leaving nothing behind) when the volume is full."""
        path = self.staging_path(job_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reraise(exc, "a staged batch")
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
        with written(tmp, "a staged batch") as fh:
            for doc in documents:
                fh.write(json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n")
        try:
            os.rename(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            reraise(exc, "a staged batch")
        return path

    def read_staging(self, job_id: str) -> list[dict]:
        with open(self.staging_path(job_id), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def delete_staging(self, job_id: str) -> None:
        self.staging_path(job_id).unlink(missing_ok=True)

    # segments

    def write_segment(self, collection: str, seq: int, records: RecordSource,
                      vectors: np.ndarray | Iterable[np.ndarray], meta: dict) -> Path:
        """Write one immutable segment: chunk records (one JSON line each, in vector order), their
        float32 vectors (an array, or slices of `meta["dim"]` columns in order, so a compaction of
        millions of rows holds one slice) and meta.json (docs it holds, tombstones, model, dim)."""
        if isinstance(vectors, np.ndarray) and len(records) != len(vectors):
            raise ValueError("records and vectors differ in length")
        final = self.segment_dir(collection, seq)
        with self.aside(final, "a segment") as tmp:
            with written(tmp / "chunks.jsonl", "a segment") as fh:
                lines = 0
                for rec in records:
                    fh.write(json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n")
                    lines += 1
            if lines != len(records):
                raise ValueError(f"{lines} chunk records written of the {len(records)} announced")
            with written(tmp / "vectors.npy", "a segment") as fh:
                if isinstance(vectors, np.ndarray):
                    write_npy(fh, vectors.astype(np.float32, copy=False))
                else:
                    writer = NpyWriter(fh, len(records), int(meta["dim"]))
                    for chunk in vectors:
                        writer.add(chunk)
                    writer.close()  # as many rows as records, or ValueError: the segment is not kept
            with written(tmp / "meta.json", "a segment") as fh:
                fh.write(json.dumps({**meta, "seq": seq, "chunks": len(records)}).encode())
        return final

    def read_segment_meta(self, collection: str, seq: int) -> dict:
        return json.loads((self.segment_dir(collection, seq) / "meta.json").read_text())

    def iter_segment_records(self, collection: str, seq: int, rows: Iterable[int] | None = None) -> Iterator[dict]:
        """A segment's chunk records in row order; with `rows` (ascending), only those rows are parsed."""
        with open(self.segment_dir(collection, seq) / "chunks.jsonl", encoding="utf-8") as fh:
            if rows is None:
                for line in fh:
                    yield json.loads(line)
                return
            wanted = iter(rows)
            want = next(wanted, None)
            for row, line in enumerate(fh):
                if want is None:
                    return
                if row == want:
                    yield json.loads(line)
                    want = next(wanted, None)
            if want is not None:
                raise ValueError(f"segment {seq} of {collection!r} has no row {want}: it ended first")

    def read_segment_vectors(self, collection: str, seq: int) -> np.ndarray:
        return np.load(self.segment_dir(collection, seq) / "vectors.npy", mmap_mode="r")

    def segment_bytes(self, collection: str, seq: int) -> int:
        folder = self.segment_dir(collection, seq)
        return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0

    def segment_seqs(self, collection: str) -> list[int]:
        """The segment folders on disk, by number (temporary ones left out)."""
        folder = self.segments_dir(collection)
        if not folder.is_dir():
            return []
        return sorted(int(c.name) for c in folder.iterdir() if c.is_dir() and re.fullmatch(r"\d{10}", c.name))

    def remove_segment(self, collection: str, seq: int) -> None:
        shutil.rmtree(self.segment_dir(collection, seq), ignore_errors=True)

    def remove_collection(self, collection: str) -> None:
        for path in (self.segments_dir(collection), self.indexes_dir(collection)):
            shutil.rmtree(path, ignore_errors=True)

    def remove_stale_temps(self, parent: Path) -> int:
        """Delete leftover temporary directories (from builds killed mid-write) under `parent`."""
        count = 0
        if parent.is_dir():
            for child in parent.iterdir():
                if child.name.startswith(TMP_PREFIX):
                    shutil.rmtree(child, ignore_errors=True)
                    count += 1
        return count
