"""`swapline mcp` driven by the MCP SDK's own stdio client, against a real API and worker (hashing
embedder): the tools are listed, search answers, index_status answers while a rebuild is still
running (it reports it, and the rebuild finishes only afterwards), remember and forget return their
jobs at once and the note becomes findable, then gone."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime

import pytest
import requests
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support import BIN, create_collection, ingest_and_rebuild, wait_for, wait_job

pytestmark = pytest.mark.integration

DOCS = [{"id": f"guide/{i}.md", "text": f"# Guide {i}\n" + "\n".join(
    f"## Step {j}\nRotate credentials {i} {j} by running the rotation job." for j in range(8))} for i in range(12)]


def server_params(base: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")}
    return StdioServerParameters(command=str(BIN / "swapline"), args=["mcp"], env={**env, "SWAPLINE_URL": base})


def structured(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content


def test_mcp_tools_over_stdio(settings, procs):
    # Slow build steps, so a rebuild is still running when index_status asks.
    s = settings.with_(build_step=8, build_step_delay=0.4)
    base = procs.api(s)
    procs.worker(s)
    create_collection(base, "kb")
    ingest_and_rebuild(base, DOCS, "kb")

    async def session():
        async with Client(server_params(base)) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert tools == {"search", "index_status", "add_source", "reconcile", "remember", "forget"}

            found = structured(await client.call_tool("search", {"collection": "kb", "query": "rotate credentials 3",
                                                                 "k": 3}))
            assert found["mode"] == "hybrid" and len(found["hits"]) == 3
            assert found["hits"][0]["doc_id"] == "guide/3.md" and found["hits"][0]["keyword_rank"] is not None

            # A rebuild of 96 chunks in steps of 8, 0.4 s apart: several seconds of work.
            rebuild = requests.post(f"{base}/v1/collections/kb/rebuild", timeout=10).json()
            wait_for(lambda: requests.get(f"{base}/v1/jobs/{rebuild['id']}", timeout=5).json()["state"] == "running",
                     timeout=30, message="the rebuild to start")
            status = structured(await client.call_tool("index_status", {"collection": "kb"}))
            answered = time.time()
            assert status["running"] is True and status["running_job"]["id"] == rebuild["id"]
            assert status["running_job"]["progress"]["stage"] in ("merge", "build", "write", "verify", "publish")
            assert status["counts_by_type"] == {".md": {"documents": 12, "chunks": 96}}
            assert status["documents"] == 12 and status["last_rebuild"]["version"] >= 1

            remembered = structured(await client.call_tool("remember", {
                "collection": "kb", "text": "The staging cluster password rotates every Tuesday.",
                "tags": ["ops", "secrets"]}))
            assert remembered["state"] == "queued" and remembered["id"].startswith("kb:notes/")
            return rebuild, answered, remembered

    rebuild, answered, remembered = asyncio.run(session())
    done = wait_job(base, rebuild["id"], timeout=120)
    # index_status answered while the rebuild ran: the rebuild finished after the answer.
    assert done["state"] == "succeeded", done
    assert datetime.fromisoformat(done["finished_at"].replace("Z", "+00:00")).timestamp() > answered
    ingest = wait_job(base, remembered["job_id"], timeout=60)
    assert ingest["state"] == "succeeded", ingest
    wait_job(base, ingest["result"]["rebuild_job_id"], timeout=120)

    def note_found():
        return asyncio.run(_call(base, "search", {"collection": "kb", "query": "password rotates Tuesday", "k": 1,
                                                  "filter": {"type": "note", "metadata.tags": "secrets"}}))

    hit = wait_for(lambda: note_found()["hits"], timeout=60, message="the note to be searchable")
    assert hit[0]["doc_id"] == remembered["doc_id"] and hit[0]["metadata"]["tags"] == ["ops", "secrets"]

    forgotten = asyncio.run(_call(base, "forget", {"id": remembered["id"]}))
    assert forgotten["doc_id"] == remembered["doc_id"]
    deleted = wait_job(base, forgotten["job_id"], timeout=60)
    wait_job(base, deleted["result"]["rebuild_job_id"], timeout=120)
    wait_for(lambda: not note_found()["hits"], timeout=60, message="the note to be gone")


def test_mcp_add_source_and_reconcile(settings, procs, tmp_path):
    root = tmp_path / "repos"
    (root / "ops").mkdir(parents=True)
    (root / "ops" / "rotate.md").write_text("# Rotating keys\nThe vault key rotates on the first Monday.\n")
    s = settings.with_(source_roots=str(root))
    base = procs.api(s)
    procs.worker(s)

    async def session():
        async with Client(server_params(base)) as client:
            added = structured(await client.call_tool("add_source", {"collection": "repo", "path": str(root / "ops"),
                                                                     "watch": False}))
            assert added["state"] == "queued" and added["path"] == str((root / "ops").resolve())
            first = wait_job(base, added["job_id"], timeout=120)
            assert first["state"] == "succeeded" and first["result"]["files_added"] == 1, first
            wait_job(base, first["result"]["rebuild_job_id"], timeout=120)
            (root / "ops" / "revoke.md").write_text("# Revoking\nA leaked token is revoked within the hour.\n")
            again = structured(await client.call_tool("reconcile", {"collection": "repo",
                                                                    "source_id": added["source_id"]}))
            return again

    again = asyncio.run(session())
    done = wait_job(base, again["job_id"], timeout=120)
    assert done["state"] == "succeeded" and done["result"]["files_added"] == 1, done
    wait_job(base, done["result"]["rebuild_job_id"], timeout=120)
    hits = wait_for(lambda: asyncio.run(_call(base, "search", {"collection": "repo", "query": "leaked token revoked",
                                                               "k": 1}))["hits"], timeout=60)
    assert hits[0]["doc_id"] == "revoke.md"


async def _call(base: str, tool: str, args: dict) -> dict:
    async with Client(server_params(base)) as client:
        return structured(await client.call_tool(tool, args))


def test_mcp_tool_errors_are_readable(settings, procs):
    base = procs.api(settings)

    async def session():
        async with Client(server_params(base)) as client:
            missing = await client.call_tool("index_status", {"collection": "nope"})
            bad = await client.call_tool("search", {"collection": "nope", "query": "x", "filter": {"a": 1}})
            return missing, bad

    missing, bad = asyncio.run(session())
    assert missing.is_error and "does not exist" in missing.content[0].text
    assert bad.is_error and "HTTP 404" in bad.content[0].text
