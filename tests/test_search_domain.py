"""Search over a written version, called directly (no Redis, no processes), with the hashing embedder:
the keyword index written, verified and memory-mapped with the version; the documents table; every
filter operator; a selective filter that still gets its true top k (exact and IVF indexes); reciprocal
rank fusion and the ranks each hit carries; a request from its body to its answer (bounds, cache,
refusals) as the API makes it. Tests taking `fmt` run over both on-disk formats: format 2 (a manifest
over parts, what every rebuild writes) and format 1 (one directory, still served for older versions)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from shared.errors import RequestRefused
from shared.index import keyword
from shared.index.doctable import DOCUMENTS_FILE, document_type
from shared.index.embedders import HashEmbedder
from shared.index.keyword import KEYWORD_DIR, KeywordVerifyFailed, tokenize
from shared.index.keywordpart import KEYWORD_PART_FILES, KeywordPart
from shared.index.parts import (
    PART_FILE,
    ServedVersion,
    open_version,
    parts_dir,
    verify_version,
)
from shared.index.vectorindex import (
    LoadedVersion,
    VerifyFailed,
    build_flat,
    build_ivf,
    read_manifest,
    write_version,
)
from shared.search.engine import KeywordUnavailable, search
from shared.search.filters import FilterError, parse_filter
from shared.search.fusion import reciprocal_rank_fusion
from shared.search.service import SearchRequest, nothing_served, search_version
from shared.settings import Settings
from tests.support import write_part_version

EMBED = HashEmbedder(64)
TOPICS = ["scheduler places pods on nodes", "volumes resize online", "dual stack networking",
          "admission webhooks validate objects", "metrics are scraped by prometheus"]


def make_records(docs: list[dict]) -> list[dict]:
    out = []
    for doc in docs:
        for i, text in enumerate(doc["chunks"]):
            out.append({"doc_id": doc["id"], "chunk_id": f"{doc['id']}#{i}", "text": text, "heading_path": ["H"],
                        "metadata": doc.get("metadata", {}), "updated_at": 1_700_000_000.0})
    return out


@pytest.fixture(params=[2, 1], ids=["format2", "format1"])
def fmt(request) -> int:
    return request.param


def write(tmp_path, records: list[dict], ivf: bool = False, fmt: int = 2) -> ServedVersion:
    """Version 1 of `records`, written, verified and opened. Format 1 is written into `tmp_path` itself;
    format 2 as a collection's indexes folder would hold it: `tmp_path/v1` over `tmp_path/parts/p1`."""
    vectors = EMBED.embed([r["text"] for r in records]) if records else np.zeros((0, 64), np.float32)
    index = build_ivf(vectors, 1000, lambda d: None, nprobe=2)[0] if ivf else build_flat(vectors, 1000, lambda d: None)
    manifest = {"kind": "ivf-flat-ip" if ivf else "flat-ip", "model": EMBED.model_id, "nprobe": 2}
    if fmt == 2:
        directory = write_part_version(tmp_path, 1, index, records, manifest)
    else:
        write_version(tmp_path, index, records, manifest)
        directory = tmp_path
    verify_version(directory)
    version = open_version(directory, 1)
    assert isinstance(version, LoadedVersion) == (fmt == 1)
    return version


def as_older_version(directory, name: str, entry: str) -> None:
    """Make a version look written before `name` (a file or folder) existed: gone from disk and from
    the manifest (its entry and its checksums)."""
    path = directory / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop(entry)
    manifest["files"] = {f: d for f, d in manifest["files"].items() if f != name and not f.startswith(name + "/")}
    (directory / "manifest.json").write_text(json.dumps(manifest))


SMALL = [
    {"id": "notes/a.md", "chunks": ["The InPlacePodVerticalScaling gate resizes pods", "second chunk of a"],
     "metadata": {"type": "note", "tags": ["infra", "k8s"], "source": "agent", "team": 7, "ok": True}},
    {"id": "keps/1287/README.md", "chunks": ["resize the CPU of a running container"],
     "metadata": {"source": "keps", "path": "sig-node/1287/README.md", "team": 1}},
    {"id": "docs/guide.txt", "chunks": ["ErrImagePull means the image could not be pulled"],
     "metadata": {"source": "docs", "ok": 1}},
]


def part_meta(version) -> dict:
    """The part.json of a one-part format-2 version."""
    [part] = version.manifest["parts"]
    return json.loads((parts_dir(version.directory) / part["name"] / PART_FILE).read_text())


def test_keyword_index_is_written_verified_and_memory_mapped(tmp_path, fmt):
    version = write(tmp_path, make_records(SMALL), fmt=fmt)
    if fmt == 2:
        meta = part_meta(version)
        assert meta["keyword"]["rows"] == 4 and meta["keyword"]["terms"] > 0
        assert set(meta["keyword"]["files"]) <= set(meta["files"])
        assert meta["tables"] == {"documents": 3, "rows": 4}
        [(part, _offset, _live)] = version.keyword.parts
        assert all(isinstance(values, np.memmap) for values in (part.terms, part.posting_rows, part.tf))
    else:
        manifest = version.manifest
        assert manifest["keyword"]["documents"] == 4 and manifest["keyword"]["bytes"] > 0
        assert manifest["documents_table"] == {"documents": 3}
        assert isinstance(version.keyword.index.scores["data"], np.memmap)
    assert version.keyword.top("inplacepodverticalscaling", 3)[0][0] == 0
    assert version.keyword.top("errimagepull", 3) == [(3, pytest.approx(version.keyword.scores("ErrImagePull")[3]))]
    assert version.keyword.top("1287", 3)[0][0] == 2  # the KEP number in the document id
    assert version.keyword.top("nothing-like-this", 3) == []
    assert tokenize("The KEP-1287 InPlacePodVerticalScaling") == ["kep", "1287", "inplacepodverticalscaling"]


def test_verify_rejects_a_keyword_index_that_does_not_match(tmp_path):
    write(tmp_path, make_records(SMALL), fmt=1)
    other = tmp_path / "other"
    other.mkdir()
    write(other, make_records(SMALL[:1]), fmt=1)
    shutil.rmtree(tmp_path / KEYWORD_DIR)
    shutil.copytree(other / KEYWORD_DIR, tmp_path / KEYWORD_DIR)
    with pytest.raises(VerifyFailed, match="checksum mismatch"):
        verify_version(tmp_path)
    # The keyword index's own row check (all a version written before per-file checksums has) sees it too.
    with pytest.raises(keyword.KeywordVerifyFailed, match="keyword index has 2 rows"):
        keyword.verify(tmp_path, read_manifest(tmp_path))


def test_verify_rejects_a_keyword_part_that_does_not_match(tmp_path):
    version = write(tmp_path, make_records(SMALL), fmt=2)
    other = write(tmp_path / "other", make_records(SMALL[:1]), fmt=2)
    part = parts_dir(version.directory) / "p1"
    for name in KEYWORD_PART_FILES:
        shutil.copy2(parts_dir(other.directory) / "p1" / name, part / name)
    with pytest.raises(VerifyFailed, match="checksum mismatch"):
        verify_version(version.directory)
    # The keyword part's own row check (what a load reads before any search) sees it too.
    with pytest.raises(KeywordVerifyFailed, match="2 row lengths for 4 rows"):
        KeywordPart(part, 4)


PAGED = [{"id": f"{'a' if i % 2 else 'b'}/{i:03d}", "chunks": [f"text {i}"] * (1 + i % 3)} for i in range(30)]


def test_documents_table_pages_by_id_with_prefix_and_cursor(tmp_path, fmt):
    docs = PAGED
    version = write(tmp_path, make_records(docs), fmt=fmt)
    table = version.documents
    seen, after = [], None
    while True:
        page, more = table.page("a/", after, 4)
        seen += [e["id"] for e in page]
        if not more:
            break
        after = page[-1]["id"]
    assert seen == sorted(d["id"] for d in docs if d["id"].startswith("a/"))
    entry = table.get("b/004")
    assert entry["chunks"] == 2 and [r["chunk_id"] for r in version.records(entry["rows"])] == ["b/004#0", "b/004#1"]
    assert table.get("c/1") is None
    assert entry["metadata"] == {} and entry["type"] == "none" and entry["updated_at"] == 1_700_000_000.0


def test_a_format1_version_without_documents_table_derives_it(tmp_path):
    # A version written before the documents table existed derives it from its chunk records.
    write(tmp_path, make_records(PAGED), fmt=1)
    as_older_version(tmp_path, DOCUMENTS_FILE, "documents_table")
    assert LoadedVersion(tmp_path, 1).documents.get("b/004")["chunks"] == 2


def test_document_type_prefers_metadata_then_path_source_and_id():
    assert document_type({"doc_id": "x.md", "metadata": {"type": "note"}}) == "note"
    assert document_type({"doc_id": "x", "metadata": {"path": "a/b.PY", "source": "s.txt"}}) == ".py"
    assert document_type({"doc_id": "x.md", "metadata": {}}) == ".md"
    assert document_type({"doc_id": "x", "metadata": {}}) == "none"


@pytest.mark.parametrize(("spec", "expected"), [
    ({"metadata.source": "keps"}, {"keps/1287/README.md"}),
    ({"source": {"in": ["keps", "docs"]}}, {"keps/1287/README.md", "docs/guide.txt"}),
    ({"metadata.tags": "k8s"}, {"notes/a.md"}),  # any element of a list
    ({"metadata.team": {"in": [7, 1]}}, {"notes/a.md", "keps/1287/README.md"}),
    ({"metadata.ok": True}, {"notes/a.md"}),  # true is not 1
    ({"metadata.ok": 1}, {"docs/guide.txt"}),
    ({"type": "note"}, {"notes/a.md"}),
    ({"type": {"in": [".md", ".txt"]}}, {"keps/1287/README.md", "docs/guide.txt"}),
    ({"path_prefix": "sig-node/"}, {"keps/1287/README.md"}),  # metadata.path
    ({"path_prefix": "notes/"}, {"notes/a.md"}),  # no path: the id
    ({"path_prefix": "keps/"}, set()),  # a document with a path is matched on its path only
    ({"metadata.missing": None}, set()),  # an absent key equals nothing, not even null
    ({"source": "keps", "metadata.team": 7}, set()),  # entries AND
])
def test_each_filter_operator(tmp_path, fmt, spec, expected):
    version = write(tmp_path, make_records(SMALL), fmt=fmt)
    answer = search(version, "pods", 10, "hybrid", parse_filter(spec), lambda q: EMBED.embed([q])[0])
    assert {h["doc_id"] for h in answer.hits} == expected
    assert answer.matched_documents == len(expected)
    assert answer.scanned == sum(len(d["chunks"]) for d in SMALL if d["id"] in expected)


@pytest.mark.parametrize(("spec", "message"), [
    ({"metadata.x": {"gt": 3}}, "unknown operator 'gt'"),
    ({"metadata.x": {"in": 3}}, "'in' takes a list"),
    ({"metadata.x": {"in": []}}, "'in' takes a list"),
    ({"metadata.x": {"in": [{"a": 1}]}}, "'in' values are"),
    ({"metadata.x": {"in": [1], "eq": 2}}, "exactly one operator"),
    ({"metadata.x": [1, 2]}, "a list needs an operator"),
    ({"metadata.x": {}}, "exactly one operator"),
    ({"colour": "red"}, "unknown filter key"),
    ({"metadata.": "red"}, "unknown filter key"),
    ({"path_prefix": 3}, "path_prefix is a string"),
    ([1], "a filter is a JSON object"),
])
def test_filters_outside_the_grammar_are_refused(spec, message):
    with pytest.raises(FilterError, match=message):
        parse_filter(spec)


@pytest.mark.parametrize("ivf", [False, True])
def test_a_selective_filter_still_returns_the_true_top_k(tmp_path, fmt, ivf):
    rng = np.random.default_rng(5)
    docs = [{"id": f"d{i:04d}", "chunks": [f"{TOPICS[int(rng.integers(len(TOPICS)))]} variant {i} {j}"
                                             for j in range(5)],
             "metadata": {"bucket": i % 100}} for i in range(800)]  # 4000 chunks, 1% in bucket 42
    version = write(tmp_path, make_records(docs), ivf=ivf, fmt=fmt)
    query = EMBED.embed(["scheduler places pods on nodes"])[0]
    flt = parse_filter({"metadata.bucket": 42})
    answer = search(version, "scheduler places pods", 10, "vector", flt, lambda q: query)
    assert len(answer.hits) == 10 and answer.scanned == 40 and answer.matched_documents == 8
    assert {h["metadata"]["bucket"] for h in answer.hits} == {42}
    # The true top 10 among the 40 matching chunks, by brute force over their vectors.
    rows = [i for i in range(version.vectors) if version.record(i)["metadata"]["bucket"] == 42]
    truth = sorted((float(v @ query) for v in EMBED.embed([version.record(i)["text"] for i in rows])), reverse=True)
    assert [h["score"] for h in answer.hits] == pytest.approx(truth[:10], abs=1e-5)
    # Keyword search respects the same filter: every matching chunk that holds a query word.
    holding = [i for i in rows if "scheduler" in version.record(i)["text"]]
    keyword = search(version, "scheduler places pods", 10, "keyword", flt, lambda q: query)
    assert holding and len(keyword.hits) == min(10, len(holding))
    assert {h["chunk_id"] for h in keyword.hits} <= {version.record(i)["chunk_id"] for i in holding}
    hybrid = search(version, "scheduler places pods", 10, "hybrid", flt, lambda q: query)
    assert len(hybrid.hits) == 10 and {h["metadata"]["bucket"] for h in hybrid.hits} == {42}


def test_hybrid_fuses_both_sides_and_each_hit_carries_its_ranks(tmp_path, fmt):
    version = write(tmp_path, make_records(SMALL), fmt=fmt)
    answer = search(version, "InPlacePodVerticalScaling resize", 4, "hybrid", None, lambda q: EMBED.embed([q])[0])
    assert answer.mode == "hybrid" and answer.scanned == 4 and answer.matched_documents is None
    top = answer.hits[0]
    assert top["chunk_id"] == "notes/a.md#0" and top["keyword_rank"] == 1 and top["vector_rank"] >= 1
    assert all(h["vector_rank"] is not None for h in answer.hits)
    assert top["score"] == pytest.approx(1 / (60 + top["vector_rank"]) + 1 / (60 + top["keyword_rank"]))
    vector_only = search(version, "resize", 4, "vector", None, lambda q: EMBED.embed([q])[0])
    assert all(h["keyword_rank"] is None for h in vector_only.hits)
    assert [h["vector_rank"] for h in vector_only.hits] == [1, 2, 3, 4]


def test_rrf_orders_by_summed_reciprocal_ranks():
    fused = reciprocal_rank_fusion({"vector": [1, 2, 3], "keyword": [3, 4]}, k=60)
    assert [f.row for f in fused] == [3, 1, 2, 4]
    assert fused[0].ranks == {"vector": 3, "keyword": 1}


def test_a_version_without_keyword_index_answers_hybrid_as_vector(tmp_path):
    write(tmp_path, make_records(SMALL), fmt=1)  # format 2 always has one
    as_older_version(tmp_path, KEYWORD_DIR, "keyword")
    verify_version(tmp_path)  # older versions stay valid (rollback)
    version = open_version(tmp_path, 1)
    assert search(version, "pods", 2, "hybrid", None, lambda q: EMBED.embed([q])[0]).mode == "vector"
    with pytest.raises(KeywordUnavailable):
        search(version, "pods", 2, "keyword", None, lambda q: EMBED.embed([q])[0])


def test_an_empty_version_has_an_empty_keyword_index(tmp_path, fmt):
    version = write(tmp_path, [], fmt=fmt)
    assert search(version, "anything", 5, "hybrid", None, lambda q: EMBED.embed([q])[0]).hits == []
    assert search(version, "anything", 5, "keyword", parse_filter({"type": "x"}), None).hits == []


class DictCache:
    def __init__(self):
        self.data = {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value


BOUNDS = Settings(max_k=5, max_query_chars=20)


def search_body(**changes) -> dict:
    return {"query": "pods", "k": 2, "mode": "hybrid", "filter": None, **changes}


@pytest.mark.parametrize("changes, field", [({"k": 6}, "k"), ({"query": "x" * 21}, "query"),
                                            ({"filter": {"colour": "red"}}, "filter")])
def test_a_search_past_a_bound_or_with_a_filter_outside_the_grammar_is_refused(changes, field):
    with pytest.raises(RequestRefused) as refused:
        SearchRequest.from_body(search_body(**changes), BOUNDS)
    assert (refused.value.status, refused.value.code) == (422, "invalid") and field in refused.value.errors


def test_the_served_version_answers_once_then_from_its_cache(tmp_path, fmt):
    version, cache = write(tmp_path, make_records(SMALL), fmt=fmt), DictCache()
    request = SearchRequest.from_body(search_body(filter={"path_prefix": "a"}), BOUNDS)
    first = search_version(version, cache, request, EMBED)
    assert (first.cached, first.version, first.result["index_version"]) == (False, 1, 1)
    assert first.result["mode"] == "hybrid" and first.result["matched_documents"] is not None
    again = search_version(version, cache, request, EMBED)
    assert again.cached and again.result == first.result
    assert nothing_served(request).result == {"index_version": None, "mode": "hybrid", "scanned": 0,
                                              "matched_documents": None, "hits": []}


def test_an_index_of_another_model_or_without_keywords_is_refused(tmp_path, fmt):
    version = write(tmp_path, make_records(SMALL), fmt=fmt)
    other = HashEmbedder(32)
    with pytest.raises(RequestRefused) as refused:
        search_version(version, DictCache(), SearchRequest.from_body(search_body(mode="vector"), BOUNDS), other)
    assert (refused.value.status, refused.value.code) == (409, "model_mismatch")
    keyword = SearchRequest.from_body(search_body(mode="keyword"), BOUNDS)
    assert search_version(version, DictCache(), keyword, other).result["hits"]  # no model needed


def test_a_keyword_search_of_a_version_without_keywords_is_refused(tmp_path):
    write(tmp_path, make_records(SMALL), fmt=1)  # a format-2 part always has its keyword postings
    keyword = SearchRequest.from_body(search_body(mode="keyword"), BOUNDS)
    as_older_version(tmp_path, KEYWORD_DIR, "keyword")
    with pytest.raises(RequestRefused) as refused:
        search_version(open_version(tmp_path, 1), DictCache(), keyword, EMBED)
    assert (refused.value.status, refused.value.code) == (409, "keyword_index_missing")
