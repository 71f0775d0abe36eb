"""Reads, filters and search modes over HTTP, on a real API process and a real worker (hashing embedder):
collections and documents listed with paging, one document read as stored in the served version,
each filter operator, a 1% filter that still returns k hits, and a filter outside the grammar (422)."""

from __future__ import annotations

import pytest
import requests

from tests.support import create_collection, ingest_and_rebuild, search, wait_for

pytestmark = pytest.mark.integration


def _doc(i: int) -> dict:
    sections = "\n".join(f"## Part {j}\nDocument {i} part {j} talks about pods, nodes and volumes {i * 10 + j}."
                         for j in range(10))
    return {"id": f"group-{i % 4}/doc {i:03d}.md", "text": f"# Doc {i}\n{sections}",
            "metadata": {"bucket": i, "tags": ["even" if i % 2 == 0 else "odd", f"g{i % 4}"],
                         "source": f"src-{i % 3}"}}


@pytest.fixture(scope="module")
def stack(module_settings, module_procs):
    """One stack for the module: every test here only reads it."""
    settings, procs = module_settings, module_procs
    base = procs.api(settings)
    procs.worker(settings)
    for name in ("alpha", "beta", "gamma"):
        create_collection(base, name)
    _, rebuild = ingest_and_rebuild(base, [_doc(i) for i in range(100)], "alpha")
    version = rebuild["result"]["version"]
    wait_for(lambda: search(base, "pods", "alpha").json()["index_version"] == version, timeout=30,
             message="the API to serve the new version")
    return base, version


def test_collections_and_documents_are_listed_with_paging_and_read(stack):
    base, version = stack
    first = requests.get(f"{base}/v1/collections", params={"limit": 2}).json()
    assert [c["name"] for c in first["collections"]] == ["alpha", "beta"]
    alpha = first["collections"][0]
    assert alpha["documents"] == 100 and alpha["chunks"] == 1000
    assert alpha["index"]["version"] == version and alpha["served_version"] == version
    assert first["collections"][1]["index"] is None and first["collections"][1]["served_version"] is None
    second = requests.get(f"{base}/v1/collections", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [c["name"] for c in second["collections"]] == ["gamma"] and second["next_cursor"] is None

    ids, cursor = [], None
    while True:
        params = {"limit": 7, "prefix": "group-1/", **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{base}/v1/collections/alpha/documents", params=params).json()
        assert page["index_version"] == version
        ids += [d["id"] for d in page["documents"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids == sorted(f"group-1/doc {i:03d}.md" for i in range(1, 100, 4))
    listed = page["documents"][-1]
    assert listed["type"] == ".md" and listed["source"] == "src-1" and listed["chunks"] == 10
    assert listed["updated_at"].endswith("Z")

    # Ids with slashes and spaces, read as stored in the served version.
    resp = requests.get(f"{base}/v1/collections/alpha/documents/group-1/doc 097.md")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["metadata"]["bucket"] == 97 and doc["index_version"] == version
    assert [c["chunk_id"] for c in doc["chunk_records"]] == [f"group-1/doc 097.md#{j}" for j in range(10)]
    assert doc["chunk_records"][3]["heading_path"] == ["Doc 97", "Part 3"]
    missing = requests.get(f"{base}/v1/collections/alpha/documents/group-1/nope.md")
    assert missing.status_code == 404 and missing.json()["code"] == "document_not_found"
    assert requests.get(f"{base}/v1/collections/nope/documents").status_code == 404
    # A collection without an index lists nothing yet, and says so.
    assert requests.get(f"{base}/v1/collections/beta/documents").json() == {
        "index_version": None, "documents": [], "next_cursor": None}
    bad = requests.get(f"{base}/v1/collections/alpha/documents", params={"cursor": "%%%"})
    assert bad.status_code == 422 and bad.json()["errors"] == {"cursor": ["not a valid cursor"]}


@pytest.mark.parametrize(("flt", "docs"), [
    ({"metadata.bucket": 5}, {5}),
    ({"metadata.bucket": {"in": [5, 6, 70]}}, {5, 6, 70}),
    ({"metadata.tags": "g3", "metadata.bucket": {"in": [3, 4, 7]}}, {3, 7}),
    ({"source": "src-2", "metadata.bucket": {"in": [2, 3, 5]}}, {2, 5}),
    ({"type": ".md", "metadata.bucket": 9}, {9}),
    ({"type": "note"}, set()),
    ({"path_prefix": "group-2/doc 01"}, {10, 14, 18}),
])
def test_each_filter_operator_over_http(stack, flt, docs):
    base, _ = stack
    for mode in ("vector", "keyword", "hybrid"):
        answer = search(base, "pods nodes volumes", "alpha", k=50, mode=mode, filter=flt)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["mode"] == mode and body["matched_documents"] == len(docs) and body["scanned"] == 10 * len(docs)
        assert {h["metadata"]["bucket"] for h in body["hits"]} == docs


def test_a_one_percent_filter_still_returns_k_hits(stack):
    base, _ = stack
    # 10 of 1000 chunks match. Over-fetching 10 and filtering afterwards would return about none.
    body = search(base, "pods nodes volumes 420", "alpha", k=10, mode="vector", filter={"metadata.bucket": 42}).json()
    assert len(body["hits"]) == 10 and body["scanned"] == 10
    assert {h["doc_id"] for h in body["hits"]} == {"group-2/doc 042.md"}
    unfiltered = search(base, "pods nodes volumes 420", "alpha", k=10, mode="vector").json()
    assert unfiltered["scanned"] == 1000 and unfiltered["matched_documents"] is None


def test_hybrid_is_the_default_and_hits_carry_both_ranks(stack):
    base, _ = stack
    body = search(base, "volumes 423", "alpha", k=5).json()
    assert body["mode"] == "hybrid"
    top = body["hits"][0]
    assert top["chunk_id"] == "group-2/doc 042.md#3" and top["keyword_rank"] == 1
    assert all(set(h) >= {"vector_rank", "keyword_rank", "vector_score", "keyword_score"} for h in body["hits"])


@pytest.mark.parametrize("flt", [{"metadata.bucket": {"gt": 3}}, {"colour": "red"}, {"metadata.x": [1, 2]}])
def test_filters_outside_the_grammar_are_422(stack, flt):
    base, _ = stack
    resp = search(base, "pods", "alpha", filter=flt)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "invalid" and set(body["errors"]) == {"filter"} and body["message"].startswith("filter")
    assert search(base, "pods", "alpha", mode="fuzzy").status_code == 422


def test_cli_lists_collections_and_documents_and_searches_with_a_filter(stack):
    from tests.test_cli import swapline

    base, version = stack
    listed = swapline(base, "collections")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["NAME", "DOCUMENTS", "CHUNKS", "PUBLISHED", "SERVED"]
    assert rows[1] == ["alpha", "100", "1000", f"v{version}", f"v{version}"] and rows[2][0] == "beta"
    docs = swapline(base, "docs", "alpha", "--prefix", "group-3/doc 09")
    assert docs.returncode == 0, docs.stderr
    lines = docs.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "CHUNKS", "SOURCE", "UPDATED"]
    assert [line.split("  ")[0] for line in lines[1:-1]] == ["group-3/doc 091.md", "group-3/doc 095.md",
                                                             "group-3/doc 099.md"]
    assert lines[-1] == f"3 documents in 'alpha', index v{version}"
    found = swapline(base, "search", "alpha", "pods", "-k", "3", "--filter", '{"metadata.bucket": 7}')
    assert found.returncode == 0, found.stderr
    assert "(index v" in found.stdout and ", hybrid)" in found.stdout and found.stdout.count("group-3/doc 007.md") == 3
    bad = swapline(base, "search", "alpha", "pods", "--filter", '{"metadata.bucket": {"gt": 1}}')
    assert bad.returncode == 1 and "unknown operator 'gt'" in bad.stderr
