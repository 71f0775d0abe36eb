"""The tables of an index part (format 2): its chunk records, documents and metadata facets as Arrow IPC
files, memory-mapped and read zero-copy, so loading a version builds no Python object per row or per
document and filters run over columns.

A part is a contiguous block of rows written once by a rebuild; a version is a list of parts, each at a
global row offset and with a deletion mask (True = deleted row; None = nothing deleted) for the rows of
documents replaced or deleted since. A document lives in exactly one part, its chunks contiguous rows.

    records.arrow    one row per chunk: doc (index into documents.arrow), chunk_id, text, heading_path,
                     lines (null when absent), extra (JSON of any other keys; null when none)
    documents.arrow  sorted by id: id, type, source, path, metadata (JSON), chunks, updated_at,
                     row_start, row_stop (local rows), segment
    facets.arrow     one row per (document, metadata field, scalar value): doc, field (null for the
                     document's type, which no metadata key can collide with), key (facet_key of the
                     value, so two values a filter treats as equal have the same key string)
"""

from __future__ import annotations

import bisect
import heapq
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.index.columns import GrowingColumn
from shared.index.doctable import FilterClause, SearchFilter, document_type, value_key
from shared.storage import written

RECORDS_FILE = "records.arrow"
DOCUMENTS_FILE = "documents.arrow"
FACETS_FILE = "facets.arrow"

RECORDS_SCHEMA = pa.schema([
    pa.field("doc", pa.int32(), nullable=False),
    pa.field("chunk_id", pa.string(), nullable=False),
    pa.field("text", pa.large_string(), nullable=False),  # a part's text may pass 2 GiB; ids never do
    pa.field("heading_path", pa.list_(pa.string()), nullable=False),
    pa.field("lines", pa.list_(pa.int32())),
    pa.field("extra", pa.string()),
])
_VALUE_COLUMNS = tuple(name for name in RECORDS_SCHEMA.names if name != "doc")
DOCUMENTS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("type", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("path", pa.string()),
    pa.field("metadata", pa.string(), nullable=False),
    pa.field("chunks", pa.int32(), nullable=False),
    pa.field("updated_at", pa.float64()),
    pa.field("row_start", pa.int32(), nullable=False),
    pa.field("row_stop", pa.int32(), nullable=False),
    pa.field("segment", pa.int64(), nullable=False),
])
FACETS_SCHEMA = pa.schema([
    pa.field("doc", pa.int32(), nullable=False),
    pa.field("field", pa.string()),
    pa.field("key", pa.string(), nullable=False),
])
CORE_KEYS = frozenset({"doc_id", "chunk_id", "text", "heading_path", "metadata", "updated_at", "lines"})
INT32_MAX = 2**31 - 1


class TablesVerifyFailed(RuntimeError):
    pass


def facet_key(key: tuple) -> str:
    """A value_key as a string, equal for exactly the value_keys that are equal: booleans, numbers,
    strings and null each under their own prefix, an integral float written as the integer it equals."""
    kind, value = key
    if kind == "bool":
        return "b:1" if value else "b:0"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, float):
        return "n:" + (str(int(value)) if value.is_integer() else repr(value))
    return "n:" + str(value)


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _lines_column(value) -> list[int] | None:
    """`lines` when the lines column can hold it exactly (a list of int32s), else None."""
    if isinstance(value, list) and all(type(v) is int and -INT32_MAX <= v <= INT32_MAX for v in value):
        return value
    return None


def _facets(metadata: dict, type_: str) -> set[tuple[str | None, str]]:
    found: set[tuple[str | None, str]] = {(None, facet_key(("value", type_)))}
    for name, value in metadata.items():
        for element in (value if isinstance(value, list) else (value,)):
            key = value_key(element)
            if key is not None:
                found.add((name, facet_key(key)))
    return found


def _write(path: Path, table: pa.Table) -> None:
    # Uncompressed IPC file: readers memory-map it and use the buffers in place.
    with written(path, "an index version") as fh:
        writer = pa.ipc.new_file(fh, table.schema)
        writer.write_table(table)
        writer.close()


BATCH_ROWS = 65_536  # values gathered as Python objects before they become Arrow arrays


class _Columns:
    """Columns of one table gathered row by row, appended to growing buffers every BATCH_ROWS values
    (`shared.index.columns`), so a part of millions of rows holds each column about once, not a Python
    object per value nor its batches beside their concatenation."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.pending: dict[str, list] = {name: [] for name in schema.names}
        self.grown = {field.name: GrowingColumn(field.type, field.nullable) for field in schema}

    def flush(self, force: bool = False) -> None:
        waiting = len(self.pending[self.schema.names[0]])
        if not waiting or not force and waiting < BATCH_ROWS:
            return
        for field in self.schema:
            self.grown[field.name].append(pa.array(self.pending[field.name], type=field.type))
            self.pending[field.name] = []

    def column(self, name: str) -> pa.Array:
        """The column in one array over its gathered buffers (no copy); nothing more is gathered after."""
        self.flush(force=True)
        return self.grown[name].array()

    def table(self, take: np.ndarray | None = None, **replaced: pa.Array) -> pa.Table:
        """The table, each column in one chunk (readers map it zero-copy); `replaced` columns instead of
        the gathered ones, rows reordered by `take`. Reordered, a column is copied and its gathered
        buffers let go one at a time, so the table is held about once more than its largest column, and
        this `_Columns` is used up."""
        self.flush(force=True)
        order = None if take is None else pa.array(take)
        columns = []
        for name in self.schema.names:
            column = replaced.pop(name) if name in replaced else self.column(name)
            columns.append(column if order is None else column.take(order))
            if order is not None:
                del self.grown[name], column
        return pa.table(columns, schema=self.schema)


def write_part_tables(directory: Path, records: Iterable[dict],
                      segment_of: Callable[[str], int] | dict[str, int]) -> dict:
    """Write the three tables of a part holding `records` (chunk records in row order, read once; a
    document's chunks contiguous, else ValueError); `segment_of` names the segment of each document id.
    Returns the manifest entry. Memory follows the columns, not a Python object per record: a part of
    ten million rows streams through here from its segments."""
    segment = segment_of.__getitem__ if isinstance(segment_of, dict) else segment_of
    docs, facets, recs = _Columns(DOCUMENTS_SCHEMA), _Columns(FACETS_SCHEMA), _Columns(RECORDS_SCHEMA)
    # Documents in the order their rows come (`seen`), sorted by id at the end.
    seen, first, doc_id, rows = -1, None, None, 0
    for rec in records:
        if rec["doc_id"] != doc_id or first is None:
            seen, first, doc_id = seen + 1, rec, rec["doc_id"]
            meta = first.get("metadata")
            shown = meta or {}
            type_ = document_type(first)
            for name, value in (("id", doc_id), ("type", type_), ("source", _text_or_none(shown.get("source"))),
                                ("path", _text_or_none(shown.get("path"))),
                                ("metadata", json.dumps(meta, ensure_ascii=False)), ("chunks", 0),
                                ("updated_at", first.get("updated_at")), ("row_start", rows), ("row_stop", 0),
                                ("segment", segment(doc_id))):
                docs.pending[name].append(value)
            for field, key in sorted(_facets(shown, type_), key=lambda f: (f[0] is not None, f)):
                facets.pending["doc"].append(seen)
                facets.pending["field"].append(field)
                facets.pending["key"].append(key)
            docs.flush()
            facets.flush()
        lines = _lines_column(rec.get("lines"))
        extra = {k: v for k, v in rec.items() if k not in CORE_KEYS or (k == "lines" and lines is None)}
        # A chunk whose metadata or updated_at differs from its document's keeps its own, exactly.
        for name in ("metadata", "updated_at"):
            mine, theirs = rec.get(name), first.get(name)
            if mine is not theirs and mine != theirs:
                extra[name] = mine
        recs.pending["doc"].append(seen)
        recs.pending["chunk_id"].append(rec["chunk_id"])
        recs.pending["text"].append(rec["text"])
        recs.pending["heading_path"].append(rec["heading_path"])
        recs.pending["lines"].append(lines)
        recs.pending["extra"].append(json.dumps(extra, ensure_ascii=False) if extra else None)
        recs.flush()
        rows += 1

    # Sorted by id; a document seen twice came back after another one's rows: its chunks are split.
    ids = docs.column("id")
    order = pc.sort_indices(ids).to_numpy() if len(ids) else np.zeros(0, dtype=np.int64)
    sorted_ids = ids.take(pa.array(order))
    if len(ids) > 1:
        repeated = pc.equal(sorted_ids[:-1], sorted_ids[1:]).to_numpy(zero_copy_only=False)
        if repeated.any():
            again = sorted_ids[int(np.argmax(repeated))].as_py()
            raise ValueError(f"the chunks of document {again!r} are not contiguous rows")
    del ids, sorted_ids
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)

    # Each table is written and let go before the next is put together.
    doc_of_row = rank[recs.column("doc").to_numpy()] if rows else np.zeros(0, dtype=np.int32)
    _write(directory / RECORDS_FILE, recs.table(doc=pa.array(doc_of_row, type=pa.int32())))
    del recs, doc_of_row
    starts = docs.column("row_start").to_numpy().astype(np.int64)
    stops = np.append(starts[1:], rows) if len(starts) else starts
    _write(directory / DOCUMENTS_FILE, docs.table(order, chunks=pa.array(stops - starts, type=pa.int32()),
                                                  row_stop=pa.array(stops, type=pa.int32())))
    del docs, starts, stops
    facet_doc = rank[facets.column("doc").to_numpy()] if len(facets.column("doc")) else np.zeros(0, np.int32)
    by_doc = np.argsort(facet_doc, kind="stable")  # a document's facets keep their order
    _write(directory / FACETS_FILE, facets.table(by_doc, doc=pa.array(facet_doc, type=pa.int32())))
    return {"documents": len(order), "rows": rows}


def _read(path: Path, schema: pa.Schema, validate: bool = False) -> dict[str, pa.Array]:
    """The columns of one table, memory-mapped (zero-copy); TablesVerifyFailed when unreadable. With
    `validate`, every offset and length inside is checked against the buffers first (a full read: Arrow
    trusts them otherwise, and a forged string offset reads out of bounds)."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise TablesVerifyFailed(f"{path}: not a readable Arrow file ({exc})") from exc
    if not table.schema.equals(schema):
        raise TablesVerifyFailed(f"{path}: schema {table.schema} is not the expected {schema}")
    columns = {}
    for field in schema:
        column = table.column(field.name)
        columns[field.name] = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if not field.nullable and columns[field.name].null_count:
            raise TablesVerifyFailed(f"{path}: column {field.name} has nulls")
        if validate:
            try:
                columns[field.name].validate(full=True)
            except pa.ArrowException as exc:
                raise TablesVerifyFailed(f"{path}: column {field.name} is malformed ({exc})") from exc
    return columns


def _numpy(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=True)


_Format = Literal["i", "q", "d"]
_FORMATS: dict[pa.DataType, _Format] = {pa.int32(): "i", pa.int64(): "q", pa.float64(): "d"}


def _typed(buffer: pa.Buffer | None, fmt: _Format, start: int, count: int) -> memoryview[Any] | None:
    """`count` values of struct format `fmt` from index `start` of an Arrow buffer, as a memoryview
    (indexing it gives Python values without an Arrow scalar each); None when the buffer is shorter."""
    size = struct.calcsize(fmt)
    raw = memoryview(buffer if buffer is not None else b"").cast("B")[start * size:(start + count) * size]
    return raw.cast(fmt) if len(raw) == count * size else None


def _value_reader(array: pa.Array) -> Callable[[int], Any]:
    """Value i of `array` as Python's value (what `array[i].as_py()` gives), read from the array's own
    buffers for the types the tables hold at a search's hits (strings, lists of strings or of int32,
    numbers): for a handful of hits about half of an Arrow scalar's cost. Other types, and buffers shorter
    than the array says, go through Arrow's scalar."""
    kind, n = array.type, len(array)
    bufs = array.buffers()
    read: Callable[[int], Any] | None = None
    if kind in _FORMATS:
        values = _typed(bufs[1], _FORMATS[kind], array.offset, n)
        if values is not None:
            read = values.__getitem__
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        offsets = _typed(bufs[1], "q" if pa.types.is_large_string(kind) else "i", array.offset, n + 1)
        data = memoryview(bufs[2] if bufs[2] is not None else b"")
        if offsets is not None:
            off = offsets

            def read(i: int) -> Any:
                return str(data[off[i]:off[i + 1]], "utf-8")
    elif pa.types.is_list(kind):
        list_offsets, child = _typed(bufs[1], "i", array.offset, n + 1), array.values
        if list_offsets is not None:
            item, starts = _value_reader(child), list_offsets

            def read(i: int) -> Any:
                return [item(j) for j in range(starts[i], starts[i + 1])]
    if read is None:
        return lambda i: array[i].as_py()
    if not array.null_count:
        return read
    bits, first = memoryview(bufs[0]).cast("B"), array.offset
    return lambda i: read(i) if bits[(first + i) >> 3] >> ((first + i) & 7) & 1 else None


class _Strings:
    """A string column as a sequence for `bisect`, one value converted per probe."""

    def __init__(self, array: pa.Array):
        self.array = array
        self._read = _value_reader(array)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> str:
        return self._read(i)


class PartTables:
    """The tables of one part, mapped from `directory` and checked against `rows` (its row count)."""

    def __init__(self, directory: Path, rows: int, validate: bool = False):
        self.records = _read(directory / RECORDS_FILE, RECORDS_SCHEMA, validate)
        self.documents = _read(directory / DOCUMENTS_FILE, DOCUMENTS_SCHEMA, validate)
        self.facets = _read(directory / FACETS_FILE, FACETS_SCHEMA, validate)
        self.rows = rows
        self.ids = self.documents["id"]
        self.row_doc = _numpy(self.records["doc"])
        self.row_start = _numpy(self.documents["row_start"])
        self.row_stop = _numpy(self.documents["row_stop"])
        self._sorted_ids = _Strings(self.ids)
        # Value by value from the buffers: a search's hits read a handful of rows (see _value_reader).
        self._read = {name: _value_reader(self.records[name]) for name in _VALUE_COLUMNS}
        self._read_doc = {"id": self._sorted_ids.__getitem__,
                          **{name: _value_reader(self.documents[name]) for name in ("metadata", "updated_at")}}
        self._paths: pa.Array | None = None
        self._check(directory)

    def _check(self, directory: Path) -> None:
        docs = len(self.ids)
        if len(self.row_doc) != self.rows:
            raise TablesVerifyFailed(f"{directory}: {len(self.row_doc)} records for a part of {self.rows} rows")
        for name, table in (("documents", self.documents), ("facets", self.facets)):
            lengths = {len(column) for column in table.values()}
            if len(lengths) != 1:
                raise TablesVerifyFailed(f"{directory}: the columns of the {name} table differ in length")
        start, stop, chunks = self.row_start, self.row_stop, _numpy(self.documents["chunks"])
        if docs and (start.min() < 0 or stop.max() > self.rows or (stop <= start).any()
                     or (stop - start != chunks).any() or int(chunks.sum()) != self.rows):
            raise TablesVerifyFailed(f"{directory}: document row ranges do not cover the part's rows")
        if docs > 1 and not pc.all(pc.less(self.ids[:-1], self.ids[1:])).as_py():
            raise TablesVerifyFailed(f"{directory}: document ids are not sorted and distinct")
        for name, doc in (("records", self.row_doc), ("facets", _numpy(self.facets["doc"]))):
            if len(doc) and (doc.min() < 0 or doc.max() >= docs):
                raise TablesVerifyFailed(f"{directory}: a {name} row names a document out of range")
        rows = np.arange(self.rows, dtype=np.int64)
        if self.rows and ((rows < start[self.row_doc]) | (rows >= stop[self.row_doc])).any():
            raise TablesVerifyFailed(f"{directory}: a record lies outside its document's rows")

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, doc_id: str) -> int | None:
        """The index of document `doc_id`, by bisection over the sorted ids."""
        i = bisect.bisect_left(self._sorted_ids, doc_id)
        return i if i < len(self.ids) and self._sorted_ids[i] == doc_id else None

    def bisect(self, doc_id: str, right: bool = False) -> int:
        return (bisect.bisect_right if right else bisect.bisect_left)(self._sorted_ids, doc_id)

    def document(self, i: int) -> dict:
        """Entry of document `i`, as DocTable entries; `rows` in local rows."""
        d = {name: self.documents[name][i].as_py() for name in DOCUMENTS_SCHEMA.names}
        return {"id": d["id"], "type": d["type"], "source": d["source"], "path": d["path"],
                "metadata": json.loads(d["metadata"]) or {}, "chunks": d["chunks"], "updated_at": d["updated_at"],
                "rows": [[d["row_start"], d["row_stop"]]]}

    def record(self, local_row: int) -> dict:
        return self.records_range(local_row, local_row + 1)[0]

    def records_range(self, start: int, stop: int) -> list[dict]:
        """The chunk records of local rows [start, stop), as they were written."""
        return self._records({name: self.records[name][start:stop].to_pylist() for name in RECORDS_SCHEMA.names})

    def records_at(self, local_rows: list[int]) -> list[dict]:
        """The chunk records of `local_rows`, in that order (a search's hits): each value read on its own
        from the column's buffers (10 hits of a 3,000-record part in 56 µs, 71 through an Arrow scalar per
        value, more through a take and a list conversion per column or a slice per row)."""
        columns = {name: [read(r) for r in local_rows] for name, read in self._read.items()}
        return self._records({"doc": self.row_doc[local_rows].tolist(), **columns})

    def _records(self, columns: dict[str, list]) -> list[dict]:
        """Records from the records table's columns, read as Python lists, each with its document's id,
        metadata and updated_at (read once per document)."""
        out = []
        docs: dict[int, tuple[str, object, object]] = {}
        for j in range(len(columns["doc"])):
            doc = columns["doc"][j]
            if doc not in docs:
                read = self._read_doc
                docs[doc] = (read["id"](doc), json.loads(read["metadata"](doc)), read["updated_at"](doc))
            doc_id, metadata, updated_at = docs[doc]
            rec = {"doc_id": doc_id, "chunk_id": columns["chunk_id"][j], "text": columns["text"][j],
                   "heading_path": columns["heading_path"][j], "metadata": metadata, "updated_at": updated_at}
            if columns["lines"][j] is not None:
                rec["lines"] = columns["lines"][j]
            if columns["extra"][j] is not None:
                rec.update(json.loads(columns["extra"][j]))
            out.append(rec)
        return out

    def paths(self) -> pa.Array:
        """Per document, its metadata path, else its id: what path_prefix matches."""
        if self._paths is None:
            self._paths = pc.coalesce(self.documents["path"], self.ids)
        return self._paths

    def matches(self, clause: FilterClause) -> np.ndarray:
        """A boolean verdict per document for one filter clause, over the columns."""
        if clause.prefix is not None:
            return pc.starts_with(self.paths(), pattern=clause.prefix).to_numpy(zero_copy_only=False)
        verdicts = np.zeros(len(self), dtype=bool)
        keys = pa.array(sorted(facet_key(k) for k in clause.keys), type=pa.string())
        if not len(keys):
            return verdicts
        fields = self.facets["field"]
        on_field = pc.is_null(fields) if clause.field is None else pc.equal(fields, clause.field)
        hit = pc.and_(on_field, pc.is_in(self.facets["key"], value_set=keys))
        docs = pc.filter(self.facets["doc"], pc.fill_null(hit, False))
        verdicts[_numpy(docs)] = True
        return verdicts


class VersionDocuments:
    """The documents of a format-2 version over its parts: what DocTable is to format 1 (list, read,
    filter), built without a Python object per document. `parts` are (tables, global row offset,
    deletion mask or None) in row order, newer parts later; a document is live when its first row is
    not deleted."""

    def __init__(self, parts: list[tuple[PartTables, int, np.ndarray | None]], total_rows: int):
        self.parts = parts
        self.total_rows = total_rows
        self.offsets = [offset for _, offset, _ in parts]
        self.live = [np.ones(len(t), dtype=bool) if deleted is None else ~deleted[t.row_start]
                     for t, _, deleted in parts]
        self._len = sum(int(live.sum()) for live in self.live)

    def __len__(self) -> int:
        return self._len

    def _entry(self, p: int, i: int) -> dict:
        entry = self.parts[p][0].document(i)
        offset = self.offsets[p]
        entry["rows"] = [[start + offset, stop + offset] for start, stop in entry["rows"]]
        return entry

    def get(self, doc_id: str) -> dict | None:
        for p in reversed(range(len(self.parts))):
            i = self.parts[p][0].find(doc_id)
            if i is not None and self.live[p][i]:
                return self._entry(p, i)
        return None

    def _ids_from(self, p: int, prefix: str, after: str | None) -> Iterator[tuple[str, int, int]]:
        """(id, -p, i) of the live documents of part `p` whose id starts with `prefix`, after `after`."""
        tables, live = self.parts[p][0], self.live[p]
        i = tables.bisect(prefix)
        if after is not None:
            i = max(i, tables.bisect(after, right=True))
        while i < len(tables):
            doc_id = tables.ids[i].as_py()
            if not doc_id.startswith(prefix):
                return
            if live[i]:
                yield doc_id, -p, i
            i += 1

    def page(self, prefix: str = "", after: str | None = None, limit: int = 100) -> tuple[list[dict], bool]:
        """Up to `limit` live entries whose id starts with `prefix`, in id order, after id `after`; and
        whether more follow. A k-way merge of the parts' sorted ids."""
        out: list[dict] = []
        last = None
        for doc_id, neg_p, i in heapq.merge(*(self._ids_from(p, prefix, after) for p in range(len(self.parts)))):
            if doc_id == last:
                continue  # the same id live in an older part too: the newest (first merged) wins
            if len(out) == limit:
                return out, True
            out.append(self._entry(-neg_p, i))
            last = doc_id
        return out, False

    def _part_of(self, row: int) -> int:
        p = bisect.bisect_right(self.offsets, row) - 1
        if p < 0 or row >= self.offsets[p] + self.parts[p][0].rows:
            raise IndexError(f"row {row} is in no part")
        return p

    def record(self, row: int) -> dict:
        p = self._part_of(row)
        return self.parts[p][0].record(row - self.offsets[p])

    def records_at(self, rows: list[int]) -> list[dict]:
        """The records of global `rows`, in that order: one read per part for the rows it holds."""
        by_part: dict[int, list[int]] = {}
        for row in rows:
            by_part.setdefault(self._part_of(row), []).append(row)
        found: dict[int, dict] = {}
        for p, part_rows in by_part.items():
            offset = self.offsets[p]
            found.update(zip(part_rows, self.parts[p][0].records_at([row - offset for row in part_rows]), strict=True))
        return [found[row] for row in rows]

    def records(self, rows: list[list[int]]) -> list[dict]:
        """The records of global row ranges [start, stop), in order."""
        out: list[dict] = []
        for start, stop in rows:
            while start < stop:
                p = self._part_of(start)
                tables, offset = self.parts[p][0], self.offsets[p]
                end = min(stop, offset + tables.rows)
                out += tables.records_range(start - offset, end - offset)
                start = end
        return out

    def select(self, flt: SearchFilter) -> tuple[int, np.ndarray]:
        """How many live documents pass `flt`, and the boolean mask over the version's rows."""
        matched = 0
        rows = np.zeros(self.total_rows, dtype=bool)
        for (tables, offset, _), live in zip(self.parts, self.live, strict=True):
            verdicts = live.copy()
            for clause in flt.clauses:
                if not verdicts.any():
                    break
                verdicts &= tables.matches(clause)
            matched += int(verdicts.sum())
            rows[offset:offset + tables.rows] = verdicts[tables.row_doc]
        return matched, rows

    def count_by_type(self) -> dict[str, dict[str, int]]:
        """type -> {"documents": n, "chunks": m} over the live documents."""
        counts: dict[str, dict[str, int]] = {}
        for (tables, _, _), live in zip(self.parts, self.live, strict=True):
            columns = {"type": tables.documents["type"], "chunks": tables.documents["chunks"]}
            kept = pa.table(columns).filter(pa.array(live))
            for row in kept.group_by("type").aggregate([("chunks", "count"), ("chunks", "sum")]).to_pylist():
                entry = counts.setdefault(row["type"], {"documents": 0, "chunks": 0})
                entry["documents"] += row["chunks_count"]
                entry["chunks"] += row["chunks_sum"]
        return counts
