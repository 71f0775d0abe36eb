"""What is live in a collection: the latest version of each document across its segments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.services import Services


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


def read_live(svc: Services, collection: str, segments: list[int], latest: Latest,
              dim: int) -> tuple[list[dict], np.ndarray]:
    """The live rows that `segments` (in the order given) hold under `latest`: records, each with
    `updated_at` (when its document's version was first written), and their vectors."""
    records: list[dict] = []
    parts: list[np.ndarray] = []
    holding = set(latest.segment_of.values())
    for seq in segments:
        if seq not in holding:
            continue
        vectors = svc.storage.read_segment_vectors(collection, seq)
        rows = []
        for row, rec in enumerate(svc.storage.iter_segment_records(collection, seq)):
            if latest.segment_of.get(rec["doc_id"]) == seq:
                # When this version of the document was written; a compacted segment keeps the time.
                rec.setdefault("updated_at", latest.written[seq])
                records.append(rec)
                rows.append(row)
        if rows:
            parts.append(np.asarray(vectors[rows], dtype=np.float32))
    stacked = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    return records, stacked


def live_rows(svc: Services, collection: str, segments: list[int], dim: int) -> tuple[dict[str, int], list[dict],
                                                                                   np.ndarray, int]:
    """The live chunks of a collection. Returns (live document -> its segment, records in segment
    order, their vectors, rows read)."""
    latest = latest_documents(svc, collection, segments)
    records, vectors = read_live(svc, collection, segments, latest, dim)
    return latest.live, records, vectors, latest.rows_total
