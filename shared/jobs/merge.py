"""What is live in a collection: the latest version of each document across its segments."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shared.index.compressed import npy_rows
from shared.services import Services

SLICE_ROWS = 65536  # rows a streamed build or compaction reads from the segments at a time (96 MiB at 384-d)


@dataclass
class Latest:
    """Where each document lives after reading the segments' metadata (no chunk or vector is read)."""

    segment_of: dict[str, int | None]  # document -> the segment holding its live version; None: tombstoned
    written: dict[int, float | None]  # segment -> when it was written
    rows_total: int  # rows the segments hold, live or superseded

    @property
    def live(self) -> dict[str, int]:
        return {d: s for d, s in self.segment_of.items() if s is not None}


def latest_documents(svc: Services, collection: str, segments: list[int]) -> Latest:
    """For each document, the version in the latest registered segment wins; tombstones drop documents
    (a segment's tombstones apply before its own documents, so a replaced document lives on in it)."""
    latest = Latest({}, {}, 0)
    for seq in segments:
        meta = svc.storage.read_segment_meta(collection, seq)
        latest.written[seq] = meta.get("created_at")
        latest.rows_total += int(meta.get("chunks", 0))
        for doc in meta.get("tombstones", []):
            latest.segment_of[doc] = None
        for doc in meta.get("docs", []):
            latest.segment_of[doc] = seq
    return latest


@dataclass
class LiveRows:
    """Where the live rows of a snapshot are: for each segment holding some, its vectors file and the
    row numbers in it, in order. Their vectors are read in slices (`slices`, `take`), never all at once,
    so a build's memory follows its slice, not the collection."""

    picks: list[tuple[Path, np.ndarray]]
    dim: int

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self.picks)

    def slices(self, size: int) -> Iterator[np.ndarray]:
        """The live rows' vectors, about `size` at a time, in order."""
        for path, rows in self.picks:
            start = 0
            while start < len(rows):
                # At most `size` wanted rows, read as one block spanning at most 4 x `size` rows of the
                # file, so superseded rows between them cost a bounded read.
                stop = min(start + size, int(np.searchsorted(rows, rows[start] + 4 * size)))
                wanted = rows[start:stop]
                block = npy_rows(path, int(wanted[0]), int(wanted[-1]) + 1)
                yield np.ascontiguousarray(block[wanted - wanted[0]], dtype=np.float32)
                start = stop

    def take(self, positions: np.ndarray, size: int = 65536) -> np.ndarray:
        """The vectors of live rows at sorted `positions` (0 = the first live row)."""
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        done, start = 0, 0
        for chunk in self.slices(size):
            stop = start + len(chunk)
            upto = int(np.searchsorted(positions, stop))
            out[done:upto] = chunk[positions[done:upto] - start]
            done, start = upto, stop
        return out

    def array(self) -> np.ndarray:
        """Every live row's vector in one array (what small builds and folds use)."""
        parts = list(self.slices(1 << 20))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)


@dataclass
class LiveRecords:
    """The live rows' chunk records, read again from their segments each time they are iterated (in
    order: row i is live row i of the matching `LiveRows`), never all in memory: a full build of ten
    million rows holds their columns as it writes them, not ten million dicts. Each has `updated_at`
    (when its document's version was first written; a compacted segment keeps the time) and lacks the
    keys in `drop`."""

    svc: Services
    collection: str
    picks: list[tuple[int, np.ndarray, float | None]]  # segment, its live row numbers, when it was written
    documents: int  # distinct live documents among them
    drop: frozenset[str] = frozenset()
    chunks: dict[str, int] | None = None  # live chunks per document, when asked for

    def __len__(self) -> int:
        return sum(len(rows) for _, rows, _ in self.picks)

    def __iter__(self) -> Iterator[dict]:
        for seq, rows, written in self.picks:
            for rec in self.svc.storage.iter_segment_records(self.collection, seq, rows):
                rec.setdefault("updated_at", written)
                for key in self.drop:
                    rec.pop(key, None)
                yield rec

    def without(self, *keys: str) -> LiveRecords:
        return replace(self, drop=self.drop | frozenset(keys))


def live_records(svc: Services, collection: str, segments: list[int], latest: Latest, dim: int,
                 count_chunks: bool = False) -> tuple[LiveRecords, LiveRows]:
    """The live rows that `segments` (in the order given) hold under `latest`: their records (read
    lazily) and where their vectors are. One pass over the segments' records decides which rows are
    live and keeps only their row numbers (and, with `count_chunks`, each document's live chunks)."""
    picks: list[tuple[int, np.ndarray, float | None]] = []
    holding = set(latest.segment_of.values())
    documents = 0
    chunks: dict[str, int] | None = {} if count_chunks else None
    for seq in segments:
        if seq not in holding:
            continue
        rows = array("q")
        previous = None
        for row, rec in enumerate(svc.storage.iter_segment_records(collection, seq)):
            doc_id = rec["doc_id"]
            if latest.segment_of.get(doc_id) == seq:
                rows.append(row)
                documents += doc_id != previous  # a document's chunks are contiguous in its segment
                previous = doc_id
                if chunks is not None:
                    chunks[doc_id] = chunks.get(doc_id, 0) + 1
        if rows:
            picks.append((seq, np.frombuffer(rows, dtype=np.int64), latest.written[seq]))
    vectors = [(svc.storage.segment_dir(collection, seq) / "vectors.npy", rows) for seq, rows, _ in picks]
    return LiveRecords(svc, collection, picks, documents, chunks=chunks), LiveRows(vectors, dim)


def read_live(svc: Services, collection: str, segments: list[int], latest: Latest,
              dim: int) -> tuple[list[dict], np.ndarray]:
    """`live_records` with the vectors read into one array."""
    records, rows = live_records(svc, collection, segments, latest, dim)
    return list(records), rows.array()
