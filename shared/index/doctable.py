"""The documents table of a version: one entry per document, sorted by id, written beside the index.

Each entry names a document's id, type, source, path, metadata, when its segment was written and the
rows (chunk records and vectors) that hold its chunks. The API lists and reads documents from it and
search filters evaluate metadata once per document through it, never per chunk record.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.storage import written

DOCUMENTS_FILE = "documents.jsonl"


class DocTableVerifyFailed(RuntimeError):
    pass


def document_type(record: dict) -> str:
    """A document's type: metadata "type", else the first extension among its path, source and id
    ("none" when none has one)."""
    meta = record.get("metadata") or {}
    if isinstance(meta.get("type"), str) and meta["type"]:
        return meta["type"][:32]
    for name in (meta.get("path"), meta.get("source"), record["doc_id"]):
        ext = os.path.splitext(name)[1].lower() if isinstance(name, str) else ""
        if ext:
            return ext[:16]
    return "none"


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def build(records: Iterable[dict]) -> list[dict]:
    """Entries of the documents in `records` (chunk records in row order), sorted by id. `rows` holds
    [start, stop) ranges, usually one: a document's chunks are written together."""
    entries: dict[str, dict] = {}
    for row, rec in enumerate(records):
        entry = entries.get(rec["doc_id"])
        if entry is None:
            meta = rec.get("metadata") or {}
            entry = entries[rec["doc_id"]] = {
                "id": rec["doc_id"], "type": document_type(rec), "source": _text_or_none(meta.get("source")),
                "path": _text_or_none(meta.get("path")), "metadata": meta, "chunks": 0,
                "updated_at": rec.get("updated_at"), "rows": []}
        entry["chunks"] += 1
        if entry["rows"] and entry["rows"][-1][1] == row:
            entry["rows"][-1][1] = row + 1
        else:
            entry["rows"].append([row, row + 1])
    return [entries[doc_id] for doc_id in sorted(entries)]


def write(directory: Path, records: list[dict]) -> dict:
    """Write documents.jsonl for `records`; returns its manifest entry."""
    entries = build(records)
    with written(directory / DOCUMENTS_FILE, "an index version") as fh:
        for entry in entries:
            fh.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
    return {"documents": len(entries)}


def read(directory: Path) -> list[dict]:
    with open(directory / DOCUMENTS_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def verify(directory: Path, manifest: dict) -> None:
    entries = read(directory)
    chunks = sum(e["chunks"] for e in entries)
    if len(entries) != manifest["documents_table"]["documents"] or chunks != manifest["vectors"]:
        raise DocTableVerifyFailed(f"documents table has {len(entries)} documents and {chunks} chunks; the "
                                   f"version has {manifest['vectors']} vectors")


def value_key(value):
    """A metadata value as a key of the value maps: booleans kept apart from the numbers they equal in
    Python (true is not 1), 1 and 1.0 one key; None for what no filter value can equal (lists, objects,
    NaN)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (str, int, float)) or value is None:
        return ("value", value)
    return None


class FilterClause(Protocol):
    """One clause of a search filter (shared.search.filters.Clause), as the tables evaluate it: the
    documents whose `field` (their type, for None) holds one of `keys` (value_key tuples), or, when
    `prefix` is set, whose metadata path (else id) starts with it."""

    @property
    def field(self) -> str | None: ...
    @property
    def keys(self) -> frozenset: ...
    @property
    def prefix(self) -> str | None: ...


class SearchFilter(Protocol):
    """A parsed search filter (shared.search.filters.Filter): every clause must hold."""

    @property
    def clauses(self) -> Sequence[FilterClause]: ...


SMALL_POSTINGS = 16  # value maps keep short document lists as tuples: a numpy array costs ~100 bytes more


class DocTable:
    """The documents of one loaded version, for listing, reading and filtering. Filters read it column
    by column: `postings(field)` maps each value of a metadata field (or "type") to the documents that
    hold it, built once per loaded version on the first filtered search, and `prefix_range` finds the
    documents whose path starts with a prefix by bisection."""

    def __init__(self, entries: list[dict], rows: int):
        self.entries = entries
        self.ids = [e["id"] for e in entries]
        self._by_id = {e["id"]: i for i, e in enumerate(entries)}
        # Row -> index of its document in `entries`, so a per-document verdict becomes a row mask.
        self.row_doc = np.zeros(rows, dtype=np.int32)
        for i, entry in enumerate(entries):
            for start, stop in entry["rows"]:
                self.row_doc[start:stop] = i
        self._postings: dict[str | None, dict] | None = None
        self._paths: tuple[list[str], np.ndarray] | None = None

    @classmethod
    def load(cls, directory: Path, rows: int, records: Iterable[dict] | None = None) -> DocTable:
        """From documents.jsonl; versions written before it existed derive it from their records."""
        if (directory / DOCUMENTS_FILE).exists() or records is None:
            return cls(read(directory), rows)
        return cls(build(records), rows)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, doc_id: str) -> dict | None:
        i = self._by_id.get(doc_id)
        return None if i is None else self.entries[i]

    def page(self, prefix: str = "", after: str | None = None, limit: int = 100) -> tuple[list[dict], bool]:
        """Up to `limit` entries whose id starts with `prefix`, in id order, after id `after`; and
        whether more follow."""
        start = bisect.bisect_right(self.ids, after) if after is not None else 0
        start = max(start, bisect.bisect_left(self.ids, prefix))
        out: list[dict] = []
        for entry in self.entries[start:]:
            if not entry["id"].startswith(prefix):
                break
            if len(out) == limit:
                return out, True
            out.append(entry)
        return out, False

    def postings(self, field: str | None) -> dict:
        """value_key(value) -> the indexes (into `entries`) of the documents whose metadata `field` (their
        type, for None) equals the value or, for a list, holds it. Empty for an unknown field."""
        if self._postings is None:
            # Readers may race to build this once: both results are equal and the last one stays.
            self._postings = self._build_postings()
        return self._postings.get(field, {})

    def _build_postings(self) -> dict[str | None, dict]:
        maps: dict[str | None, dict] = {None: {}}
        for i, entry in enumerate(self.entries):
            maps[None].setdefault(value_key(entry["type"]), []).append(i)
            for name, value in (entry.get("metadata") or {}).items():
                field_map = maps.setdefault(name, {})
                for element in (value if isinstance(value, list) else (value,)):
                    key = value_key(element)
                    if key is not None:
                        docs = field_map.setdefault(key, [])
                        if not docs or docs[-1] != i:
                            docs.append(i)
        return {name: {key: tuple(docs) if len(docs) <= SMALL_POSTINGS else np.array(docs, dtype=np.int32)
                       for key, docs in field_map.items()} for name, field_map in maps.items()}

    def prefix_range(self, prefix: str) -> np.ndarray:
        """The indexes of the documents whose metadata path (their id when they have none) starts with
        `prefix`: two bisections over the sorted paths."""
        if self._paths is None:
            keyed = sorted((p if isinstance(p, str) else e["id"], i) for i, e in enumerate(self.entries)
                           for p in ((e.get("metadata") or {}).get("path"),))
            self._paths = ([p for p, _ in keyed], np.array([i for _, i in keyed], dtype=np.int32))
        paths, order = self._paths
        cut = len(prefix)
        lo = bisect.bisect_left(paths, prefix, key=lambda p: p[:cut])
        hi = bisect.bisect_right(paths, prefix, key=lambda p: p[:cut])
        return order[lo:hi]

    def select(self, flt: SearchFilter) -> tuple[int, np.ndarray]:
        """How many documents pass `flt`, and the boolean mask over rows."""
        verdicts = np.ones(len(self), dtype=bool)
        for clause in flt.clauses:
            if not verdicts.any():
                break
            verdicts &= self._clause_documents(clause)
        return self.rows_of(verdicts)

    def _clause_documents(self, clause: FilterClause) -> np.ndarray:
        """A boolean verdict per document for one clause."""
        verdicts = np.zeros(len(self), dtype=bool)
        if clause.prefix is not None:
            verdicts[self.prefix_range(clause.prefix)] = True
            return verdicts
        postings = self.postings(clause.field)
        for key in clause.keys:
            docs = postings.get(key)
            if docs is not None:
                verdicts[np.asarray(docs, dtype=np.int64)] = True
        return verdicts

    def rows_of(self, verdicts: np.ndarray) -> tuple[int, np.ndarray]:
        """How many documents a boolean verdict per document keeps, and the boolean mask over rows."""
        rows = verdicts[self.row_doc] if len(self.row_doc) else np.zeros(0, dtype=bool)
        return int(verdicts.sum()), rows


