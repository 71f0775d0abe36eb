"""What is live in a collection: the latest version of each document across its segments."""

from __future__ import annotations

import numpy as np

from shared.services import Services


def live_rows(svc: Services, collection: str, segments: list[int], dim: int) -> tuple[dict[str, int], list[dict],
                                                                                   np.ndarray, int]:
    """The live chunks of a collection: for each document, the version in the latest registered
    segment wins; tombstones drop documents. Each record carries `updated_at`, when its document's
    version was first written. Returns (live document -> its segment, records in segment order, their
    vectors, rows read)."""
    latest: dict[str, int | None] = {}
    written: dict[int, float | None] = {}
    rows_total = 0
    for seq in segments:
        meta = svc.storage.read_segment_meta(collection, seq)
        written[seq] = meta.get("created_at")
        rows_total += int(meta.get("chunks", 0))
        for doc in meta.get("tombstones", []):
            latest[doc] = None
        for doc in meta.get("docs", []):
            latest[doc] = seq
    records: list[dict] = []
    parts: list[np.ndarray] = []
    for seq in sorted(set(s for s in latest.values() if s is not None), key=segments.index):
        vectors = svc.storage.read_segment_vectors(collection, seq)
        rows = []
        for row, rec in enumerate(svc.storage.iter_segment_records(collection, seq)):
            if latest.get(rec["doc_id"]) == seq:
                # When this version of the document was written; a compacted segment keeps the time.
                rec.setdefault("updated_at", written[seq])
                records.append(rec)
                rows.append(row)
        if rows:
            parts.append(np.asarray(vectors[rows], dtype=np.float32))
    stacked = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    return {d: s for d, s in latest.items() if s is not None}, records, stacked, rows_total
