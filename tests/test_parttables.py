"""A part's Arrow tables (shared/index/parttables.py): records read back exactly, filters evaluated over
the facet columns mean what Filter.__call__ means one document at a time, paging merges parts in id
order past deletions, and a damaged file is refused with TablesVerifyFailed."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from shared.index.doctable import DocTable, build
from shared.index.parttables import (
    RECORDS_FILE,
    PartTables,
    TablesVerifyFailed,
    VersionDocuments,
    _value_reader,
    write_part_tables,
)
from shared.search.filters import parse_filter


def chunks(doc_id: str, n: int, metadata: dict, updated_at: float | None = 1.0) -> list[dict]:
    return [{"doc_id": doc_id, "chunk_id": f"{doc_id}#{i}", "text": f"text {doc_id} {i}",
             "heading_path": ["H", str(i)], "metadata": metadata, "updated_at": updated_at} for i in range(n)]


def part(directory, records: list[dict]) -> PartTables:
    directory.mkdir(parents=True, exist_ok=True)
    assert write_part_tables(directory, records, lambda doc_id: 7)["rows"] == len(records)
    return PartTables(directory, len(records))


def test_records_read_back_exactly(tmp_path):
    meta = {"tags": ["x", 1, True, None], "ok": False, "nested": {"a": [1, {"b": None}]}, "path": "dir/é.md",
            "n": 2.5}
    records = [
        {**chunks("zeta.md", 1, meta)[0], "text": "Grüße, 世界 \U0001f600", "lines": [3, 9], "hash": "abc",
         "score_hint": {"k": [1, 2]}},
        {**chunks("zeta.md", 2, meta)[1], "heading_path": [], "lines": [10, 12]},
        {**chunks("alpha", 1, {}, None)[0], "heading_path": []},
        {**chunks("mid.txt", 1, {"source": "s1"})[0], "lines": None, "odd": None},  # lines present but null
        {**chunks("mid.txt", 2, {"source": "s1"})[1], "updated_at": 2.0},  # a chunk with its own time
    ]
    tables = part(tmp_path, records)
    assert [tables.record(i) for i in range(len(records))] == records
    assert tables.records_range(0, len(records)) == records
    # A search's hits: any rows, any order, a row twice; each as record() reads it.
    assert tables.records_at([4, 0, 3, 2, 0]) == [records[4], records[0], records[3], records[2], records[0]]
    assert tables.records_at([]) == []
    assert [tables.ids[i].as_py() for i in range(len(tables))] == ["alpha", "mid.txt", "zeta.md"]
    assert tables.find("mid.txt") == 1 and tables.find("mid") is None and tables.find("zz") is None
    # Document entries are DocTable's entries, rows local.
    assert [tables.document(i) for i in range(len(tables))] == build(records)
    assert tables.documents["segment"].to_pylist() == [7, 7, 7]


@pytest.mark.parametrize("array", [
    pa.array(["a", None, "Grüße \U0001f600", ""] * 3, type=pa.string()),
    pa.array(["x" * 70, "世界", None], type=pa.large_string()),
    pa.array([["a", "b"], [], None, ["c", None]], type=pa.list_(pa.string())),
    pa.array([[1, -2], None, [], [3]], type=pa.list_(pa.int32())),
    pa.array([1.5, None, -2.0], type=pa.float64()),
    pa.array([1, 2**40, None], type=pa.int64()),
    pa.array([True, None, False]),  # a type the tables never hold: Arrow's scalar
    pa.array(["", ""], type=pa.string()),  # no data at all
], ids=lambda array: str(array.type))
def test_values_read_from_the_buffers_are_arrows_values(array):
    for piece in (array, array[1:], array[1:2], array[:0]):
        read = _value_reader(piece)
        assert [read(i) for i in range(len(piece))] == piece.to_pylist()


def test_a_document_split_across_rows_is_refused(tmp_path):
    records = chunks("a", 1, {}) + chunks("b", 1, {}) + chunks("a", 2, {})[1:]
    with pytest.raises(ValueError, match="not contiguous"):
        write_part_tables(tmp_path, records, {"a": 1, "b": 2})


VALUES = ["x", "y", "1", "", 1, 1.0, 2, 2.5, -0.0, 0, True, False, None, 10**20, float(10**20)]


def random_metadata(rng: random.Random, i: int) -> dict:
    meta: dict = {}
    for name in ("color", "n", "flag", "tags", "source", "ok"):
        if rng.random() < 0.6:
            meta[name] = rng.choice(VALUES)
    if rng.random() < 0.4:
        meta["tags"] = [rng.choice(VALUES) for _ in range(rng.randint(0, 3))] + ([["x"]] if rng.random() < 0.1 else [])
    if rng.random() < 0.2:
        meta["nested"] = {"color": "x"}
    if rng.random() < 0.1:
        meta["n"] = float("nan")
    if rng.random() < 0.5:
        meta["path"] = rng.choice(["src/", "src/lib/", "docs/", "d"]) + f"f{i}" + rng.choice([".py", ".md", ""])
    if rng.random() < 0.2:
        meta["type"] = rng.choice(["note", "spec"])
    return meta


def random_filter(rng: random.Random) -> dict:
    def value():
        return rng.choice(VALUES)

    def one():
        kind = rng.choice(["meta", "meta_in", "type", "source", "prefix"])
        if kind == "meta":
            return f"metadata.{rng.choice(['color', 'n', 'flag', 'tags', 'absent', 'nested', 'ok'])}", value()
        if kind == "meta_in":
            return f"metadata.{rng.choice(['color', 'n', 'tags', 'ok'])}", {"in": [value() for _ in range(3)]}
        if kind == "type":
            return "type", rng.choice([".py", ".md", "note", {"in": ["spec", ".md", "none"]}, "none"])
        if kind == "source":
            return "source", rng.choice(["x", "1", 1, {"in": ["y", True]}])
        return "path_prefix", rng.choice(["src/", "src/lib/", "d", "docs/f1", "doc", "", "zzz"])
    return dict(one() for _ in range(rng.randint(1, 3)))


def version(tmp_path, rng: random.Random, docs: int = 300, parts: int = 3):
    """A version of `parts` parts over `docs` random documents, some deleted; its live entries."""
    doc_ids = [f"d{rng.randrange(10**6):06d}-{i}" + rng.choice([".md", ".py", ""]) for i in range(docs)]
    rng.shuffle(doc_ids)
    per = len(doc_ids) // parts
    built, offset = [], 0
    live_entries = []
    for p in range(parts):
        mine = doc_ids[p * per:(p + 1) * per if p < parts - 1 else None]
        records = [rec for i, doc_id in enumerate(mine)
                   for rec in chunks(doc_id, rng.randint(1, 4), random_metadata(rng, i))]
        tables = part(tmp_path / f"part{p}", records)
        deleted = None
        if p < parts - 1:  # older parts lose some documents; the newest has none deleted
            deleted = np.zeros(len(records), dtype=bool)
            for entry in build(records):
                if rng.random() < 0.25:
                    deleted[entry["rows"][0][0]:entry["rows"][0][1]] = True
                else:
                    live_entries.append((entry, offset))
        else:
            live_entries += [(entry, offset) for entry in build(records)]
        built.append((tables, offset, deleted))
        offset += len(records)
    return VersionDocuments(built, offset), live_entries, offset


def test_select_means_what_the_filter_means_one_document_at_a_time(tmp_path):
    rng = random.Random(20240611)
    docs, live, total = version(tmp_path, rng)
    specs = [random_filter(rng) for _ in range(40)] + [
        {"metadata.flag": True}, {"metadata.flag": 1}, {"metadata.n": 1.0}, {"metadata.n": 1},
        {"metadata.color": "1"}, {"metadata.color": None}, {"metadata.tags": None}, {"metadata.n": 10**20},
        {"metadata.absent": None}, {"metadata.ok": {"in": [False, 0]}}, {"path_prefix": ""},
    ]
    nonempty = 0
    for spec in specs:
        flt = parse_filter(spec)
        matched, rows = docs.select(flt)
        expected_rows = np.zeros(total, dtype=bool)
        expected = 0
        for entry, offset in live:
            if flt(entry):
                expected += 1
                for start, stop in entry["rows"]:
                    expected_rows[start + offset:stop + offset] = True
        assert (matched, rows.tolist()) == (expected, expected_rows.tolist()), spec
        nonempty += expected > 0
    assert nonempty > 20  # the filters mostly match something, so the comparison means something


def test_format1_doctable_selects_as_before(tmp_path):
    records = chunks("a.md", 2, {"flag": True, "n": 1}) + chunks("b.txt", 1, {"flag": 1, "n": 1.0, "path": "p/b"})
    table = DocTable(build(records), len(records))
    assert parse_filter({"metadata.flag": True}).select(table)[1].tolist() == [True, True, False]
    assert parse_filter({"metadata.n": 1}).select(table)[0] == 2
    assert parse_filter({"path_prefix": "p/"}).select(table)[1].tolist() == [False, False, True]


def test_page_get_and_counts_over_parts_with_deletions(tmp_path):
    rng = random.Random(7)
    docs, live, total = version(tmp_path, rng)
    ids = sorted(entry["id"] for entry, _ in live)
    assert len(docs) == len(ids)
    for prefix, after, limit in [("", None, 1000), ("", None, 17), ("d1", None, 5), ("d", ids[40], 30),
                                 ("", ids[-1], 10), ("nope", None, 10), ("", "", 3), (ids[5][:4], ids[3], 4)]:
        entries, more = docs.page(prefix, after, limit)
        want = [i for i in ids if i.startswith(prefix) and (after is None or i > after)]
        assert [e["id"] for e in entries] == want[:limit] and more == (len(want) > limit)
    # Paging through with the last id as the cursor visits every live document once.
    seen, after = [], None
    while True:
        entries, more = docs.page(after=after, limit=23)
        seen += [e["id"] for e in entries]
        if not more:
            break
        after = entries[-1]["id"]
    assert seen == ids

    by_id = {entry["id"]: (entry, offset) for entry, offset in live}
    for doc_id in ids[::25]:
        entry, offset = by_id[doc_id]
        got = docs.get(doc_id)
        want = {**entry, "rows": [[s + offset, e + offset] for s, e in entry["rows"]]}
        assert json.dumps(got) == json.dumps(want)  # as JSON: a NaN in metadata equals itself
        records = docs.records(got["rows"])
        assert [r["doc_id"] for r in records] == [doc_id] * entry["chunks"]
        assert docs.record(got["rows"][0][0]) == records[0]
    dead = [tables.ids[i].as_py() for (tables, _, deleted), alive in zip(docs.parts, docs.live, strict=True)
            for i in np.flatnonzero(~alive)]
    assert dead and all(docs.get(doc_id) is None for doc_id in dead)
    assert docs.get("missing") is None

    counts: dict = {}
    for entry, _ in live:
        c = counts.setdefault(entry["type"], {"documents": 0, "chunks": 0})
        c["documents"] += 1
        c["chunks"] += entry["chunks"]
    assert docs.count_by_type() == counts


def test_records_span_parts(tmp_path):
    first = part(tmp_path / "a", chunks("a", 3, {}))
    second = part(tmp_path / "b", chunks("b", 2, {}))
    docs = VersionDocuments([(first, 0, None), (second, 3, None)], 5)
    assert [r["chunk_id"] for r in docs.records([[1, 5]])] == ["a#1", "a#2", "b#0", "b#1"]
    # Hits in score order, parts interleaved: each part read once, the order kept.
    assert [r["chunk_id"] for r in docs.records_at([4, 0, 3, 2])] == ["b#1", "a#0", "b#0", "a#2"]
    assert docs.records_at([3, 1]) == [docs.record(3), docs.record(1)]
    with pytest.raises(IndexError):
        docs.record(5)
    with pytest.raises(IndexError):
        docs.records_at([0, 5])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "rows"])
def test_a_damaged_part_is_refused(tmp_path, damage):
    records = chunks("a", 3, {"k": "v"}) + chunks("b", 2, {})
    write_part_tables(tmp_path, records, {"a": 1, "b": 1})
    path = tmp_path / RECORDS_FILE
    rows = len(records)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"ARROW1\x00\x00" + bytes(range(256)) * 4)
    elif damage == "missing":
        path.unlink()
    else:
        rows += 1
    with pytest.raises(TablesVerifyFailed):
        PartTables(tmp_path, rows)


def test_inconsistent_tables_are_refused(tmp_path):
    """Readable files whose contents disagree: another part's documents table beside these records."""
    part(tmp_path / "one", chunks("a", 3, {}))
    part(tmp_path / "two", chunks("a", 1, {}) + chunks("b", 1, {}))
    (tmp_path / "one" / "documents.arrow").write_bytes((tmp_path / "two" / "documents.arrow").read_bytes())
    with pytest.raises(TablesVerifyFailed, match="row ranges"):
        PartTables(tmp_path / "one", 3)
