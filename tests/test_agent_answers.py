"""Answers sized for an agent, on real processes (the session's redis-server, one `celery worker`, the
API under gunicorn, `swapline mcp` over stdio; hashing embedder, whose tokens are words and marks): a
multi-chunk document searched with group_by and max_tokens over HTTP; a source file edited without a
reconcile seen `stale` through the MCP client (and not before the edit, from the result cache too); a
search while the first build runs says the collection is being indexed. One stack for the module."""

from __future__ import annotations

import asyncio

import pytest
import requests
from mcp import Client

from shared.index.tokens import WORDS
from tests.support import create_collection, ingest, ingest_and_rebuild, search, wait_for, wait_job
from tests.test_mcp import server_params, structured

pytestmark = pytest.mark.integration

# One long paragraph (cut into overlapping windows of SWAPLINE_CHUNK_MAX_TOKENS), then short sections.
PARAGRAPH = " ".join(f"Tenant{i} pods are placed by the scheduler on node{i % 9} after quota check {i}."
                     for i in range(60))
GUIDE = ("# Placement\n\n" + PARAGRAPH + "\n\n## Quotas\n\nQuotas cap what a tenant may ask for.\n\n"
         "## Eviction\n\nEviction frees nodes for pods of higher priority.\n")
OTHER = "# Volumes\n\nVolumes are resized online by the storage driver.\n"


@pytest.fixture(scope="module")
def stack(module_settings, module_procs, tmp_path_factory):
    """API and worker over a roots folder; builds go in steps of 8 vectors 0.2 s apart, so a build of
    a few hundred chunks is still running when a search asks."""
    roots = tmp_path_factory.mktemp("roots")
    settings = module_settings.with_(source_roots=str(roots), build_step=8, build_step_delay=0.2)
    base = module_procs.api(settings)
    module_procs.worker(settings)
    return base, roots


def test_group_by_document_and_max_tokens_over_http(stack):
    base, _ = stack
    create_collection(base, "guides")
    _, rebuild = ingest_and_rebuild(base, [{"id": "guide.md", "text": GUIDE}, {"id": "volumes.md", "text": OTHER}],
                                    "guides")
    wait_for(lambda: search(base, "pods", "guides").json()["index_version"] == rebuild["result"]["version"],
             timeout=30, message="the API to serve the version")
    query = "tenant pods placed by the scheduler on nodes after quota check"
    chunks = search(base, query, "guides", k=20).json()["hits"]
    windows = [h for h in chunks if h["doc_id"] == "guide.md" and h["lines"] == [3, 3]]
    assert len(windows) >= 3  # the paragraph is several overlapping chunks, each a hit

    grouped = search(base, query, "guides", k=5, group_by="document").json()
    assert grouped["group_by"] == "document" and [h["doc_id"] for h in grouped["hits"]][0] == "guide.md"
    assert len({h["doc_id"] for h in grouped["hits"]}) == len(grouped["hits"])
    first = grouped["hits"][0]["passages"][0]
    assert (first["start_line"], first["end_line"]) == (3, 3) and first["text"] == PARAGRAPH  # overlap kept once
    for hit in grouped["hits"]:
        for passage in hit["passages"]:
            source = GUIDE if hit["doc_id"] == "guide.md" else OTHER
            region = "\n".join(source.splitlines()[passage["start_line"] - 1:passage["end_line"]])
            assert passage["text"] in region, passage
    assert sum(WORDS.count(p["text"]) for h in grouped["hits"] for p in h["passages"]) > 400

    cut = search(base, query, "guides", k=5, group_by="document", max_tokens=120)
    body = cut.json()
    texts = [p["text"] for h in body["hits"] for p in h["passages"]]
    assert body["truncated"] is True and body["tokens"] == sum(WORDS.count(t) for t in texts) <= 120
    assert body["tokens"] > 100 and PARAGRAPH.startswith(texts[0]) and len(body["hits"]) == 1
    flat = search(base, query, "guides", k=5, max_tokens=120).json()
    assert flat["tokens"] == sum(WORDS.count(h["text"]) for h in flat["hits"]) <= 120 and flat["truncated"]
    refused = search(base, query, "guides", max_tokens=0)
    assert refused.status_code == 422 and "max_tokens" in refused.json()["errors"]


def test_mcp_search_sees_a_file_edited_since_indexed_as_stale(stack):
    base, roots = stack
    folder = roots / "handbook"
    folder.mkdir()
    (folder / "rotate.md").write_text("# Rotating keys\n\nThe vault key rotates on the first Monday.\n")
    (folder / "revoke.md").write_text("# Revoking\n\nA leaked token is revoked within the hour.\n")
    create_collection(base, "handbook")
    added = requests.post(f"{base}/v1/collections/handbook/sources", json={"path": str(folder)}, timeout=30)
    assert added.status_code == 202, added.text
    first = wait_job(base, added.json()["job"]["id"], timeout=90)
    assert first["state"] == "succeeded" and first["result"]["files_added"] == 2, first
    version = wait_job(base, first["result"]["rebuild_job_id"], timeout=90)["result"]["version"]
    wait_for(lambda: search(base, "vault", "handbook").json()["index_version"] == version, timeout=30,
             message="the API to serve the source's version")

    async def session():
        async with Client(server_params(base)) as client:
            args = {"collection": "handbook", "query": "when does the vault key rotate", "k": 2}
            before = structured(await client.call_tool("search", args))
            (folder / "rotate.md").write_text("# Rotating keys\n\nThe vault key now rotates every Friday.\n")
            after = structured(await client.call_tool("search", args))
            return before, after

    before, after = asyncio.run(session())
    for answer in (before, after):
        assert answer["version"] == version and answer["indexing"] is False and answer["group_by"] == "document"
        assert answer["tokens"] <= 2000 and answer["truncated"] is False and "message" not in answer
    stale = {answer_name: {h["doc_id"]: h["stale"] for h in answer["hits"]}
             for answer_name, answer in (("before", before), ("after", after))}
    assert stale == {"before": {"rotate.md": False, "revoke.md": False},
                     "after": {"rotate.md": True, "revoke.md": False}}
    rotate = next(h for h in after["hits"] if h["doc_id"] == "rotate.md")
    assert [(p["start_line"], p["end_line"]) for p in rotate["passages"]] == [(3, 3)]
    # The same search from the API's result cache still checks the files now.
    again = search(base, "when does the vault key rotate", "handbook", k=2, group_by="document", max_tokens=2000)
    assert again.headers["X-Cache"] == "hit" and {h["doc_id"]: h["stale"] for h in again.json()["hits"]} \
        == {"rotate.md": True, "revoke.md": False}


def test_mcp_search_during_the_first_build_says_it_is_indexing(stack):
    base, _ = stack
    create_collection(base, "growing")
    # 200 chunks (one a section): 25 build steps of 8, 0.2 s apart.
    big = [{"id": f"part-{i}.md", "text": f"# Part {i}\n" + "\n".join(
        f"## Step {j}\nStep {j} of part {i} about rollout waves." for j in range(10))} for i in range(20)]

    async def session():
        async with Client(server_params(base)) as client:
            job = wait_job(base, ingest(base, big, "growing")["id"], timeout=60)
            assert job["state"] == "succeeded", job
            rebuild_id = job["result"]["rebuild_job_id"]
            wait_for(lambda: requests.get(f"{base}/v1/jobs/{rebuild_id}", timeout=5).json()["state"] == "running",
                     timeout=30, message="the rebuild to start")
            during = structured(await client.call_tool("search", {"collection": "growing", "query": "rollout waves"}))
            status = structured(await client.call_tool("index_status", {"collection": "growing"}))
            return rebuild_id, during, status

    rebuild_id, during, status = asyncio.run(session())
    assert during["hits"] == [] and during["indexing"] is True and during["version"] is None
    assert during["progress"]["job_id"] == rebuild_id and during["progress"]["kind"] == "rebuild"
    assert "still being indexed" in during["message"]
    assert status["indexing"] is True and status["version"] is None
    done = wait_job(base, rebuild_id, timeout=120)
    assert done["state"] == "succeeded", done  # the build was still to finish when the tool answered
