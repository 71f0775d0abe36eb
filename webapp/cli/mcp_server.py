"""`swapline mcp`: a Model Context Protocol server over stdio, for agents, on top of the REST API.

Each tool is one or two REST calls through the same HTTP client as the CLI (SWAPLINE_URL,
SWAPLINE_API_KEY), so it answers in the time of those calls: a search reads the version the API serves,
`index_status` reads the collection's status, `remember` and `forget` return the job the API queued
without waiting for it. Nothing a tool does waits for an ingest or a rebuild.

Tools: search, index_status, add_source, reconcile, remember, forget.
Imported only by the `mcp` command, so `swapline --help` never loads the MCP SDK.
"""

from __future__ import annotations

import uuid
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from webapp.client import ApiError, ApiUnreachable, Client, InvalidArgument, RebuildBusy

NOTE_TYPE = "note"
NOTE_PREFIX = "notes/"
INSTRUCTIONS = (
    "Swapline indexes documents into named collections and searches them by meaning and by exact words. "
    "Use `search` to find passages (mode hybrid by default; keyword for exact identifiers), `index_status` "
    "to see whether a collection is being indexed, `add_source` to make a collection follow a folder on the "
    "server (and `reconcile` to catch it up now), `remember` to store a note an agent can find later and "
    "`forget` to delete one. Indexing runs in the background: no tool waits for it.")


def _call(fn, *args, **kwargs):
    """Run one client call; API and transport errors become tool errors the model can read."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise ToolError(exc.details()) from None
    except (ApiUnreachable, InvalidArgument) as exc:
        raise ToolError(str(exc)) from None


def note_handle(collection: str, doc_id: str) -> str:
    """What `remember` returns and `forget` takes: the collection and the note's document id."""
    return f"{collection}:{doc_id}"


def build_server(client: Client) -> MCPServer:
    server = MCPServer("swapline", instructions=INSTRUCTIONS)

    @server.tool()
    def search(collection: str, query: str, k: int = 5, filter: dict[str, Any] | None = None,
               mode: str | None = None) -> dict[str, Any]:
        """Search a collection. `filter` narrows to documents by metadata, e.g. {"type": "note"},
        {"metadata.tags": "infra"}, {"path_prefix": "docs/"}, {"source": {"in": ["a", "b"]}}.
        `mode` is hybrid (default: meaning and exact words), vector or keyword."""
        answer = _call(client.search, collection, query, k, mode=mode, filter=filter)
        hits = [{key: hit.get(key) for key in ("doc_id", "chunk_id", "score", "text", "heading_path", "metadata",
                                               "vector_rank", "keyword_rank")} for hit in answer["hits"]]
        return {"collection": collection, "index_version": answer["index_version"], "mode": answer.get("mode"),
                "hits": hits}

    @server.tool()
    def index_status(collection: str) -> dict[str, Any]:
        """Whether the collection is being indexed right now (with progress and ETA), its counts by
        document type, and the last rebuild (the version served and when it was built)."""
        info = _call(client.collection, collection)
        running = info.get("running_job")
        index = info.get("index") or {}
        return {
            "collection": collection,
            "running": bool(running or info.get("pending_rebuild") or info.get("lock")),
            "running_job": running and {"id": running["id"], "kind": running["kind"],
                                        "progress": running.get("progress")},
            "pending_rebuild": info.get("pending_rebuild"),
            "documents": info.get("documents"), "chunks": info.get("chunks"),
            "counts_by_type": index.get("by_type", {}),
            "last_rebuild": {"version": index.get("version"), "built_at": index.get("built_at"),
                             "vectors": index.get("vectors")} if index else None,
            "changed_since_rebuild": info.get("drift"),
        }

    @server.tool()
    def add_source(collection: str, path: str, watch: bool = True) -> dict[str, Any]:
        """Make a collection follow a folder on the server (inside its SWAPLINE_SOURCE_ROOTS), creating
        the collection if needed. Returns at once with the source id and its first reconcile job; with
        `watch`, later edits are indexed by themselves. index_status shows the progress."""
        _call(client.create_collection, collection)
        answer = _call(client.add_source, collection, path, watch)
        src, job = answer["source"], answer["job"]
        return {"collection": collection, "source_id": src["id"], "path": src["path"], "watch": src["watch"],
                "job_id": job["id"], "state": job["state"]}

    @server.tool()
    def reconcile(collection: str, source_id: str) -> dict[str, Any]:
        """Compare a followed folder with the collection now and index what changed. Returns at once
        with the reconcile job (the one already running, if any)."""
        try:
            job = client.reconcile(collection, source_id)
        except RebuildBusy as busy:
            if not busy.job_id:
                raise ToolError(busy.details()) from None
            job = _call(client.job, busy.job_id)
        except (ApiError, ApiUnreachable, InvalidArgument) as exc:
            raise ToolError(exc.details() if isinstance(exc, ApiError) else str(exc)) from None
        return {"collection": collection, "source_id": source_id, "job_id": job["id"], "state": job["state"]}

    @server.tool()
    def remember(collection: str, text: str, tags: list[str] | None = None) -> dict[str, Any]:
        """Store a note (a document of type "note" with these tags) in the collection, creating the
        collection if needed. Returns at once with the note's id and the indexing job; the note is
        searchable once that job's rebuild is published (index_status shows it)."""
        if not text.strip():
            raise ToolError("text is empty")
        _call(client.create_collection, collection)
        doc_id = f"{NOTE_PREFIX}{uuid.uuid4().hex}"
        job = _call(client.add_documents, collection, [{"id": doc_id, "text": text, "metadata": {
            "type": NOTE_TYPE, "tags": list(tags or []), "source": "mcp"}}])
        return {"id": note_handle(collection, doc_id), "collection": collection, "doc_id": doc_id,
                "job_id": job["id"], "state": job["state"]}

    @server.tool()
    def forget(id: str, collection: str | None = None) -> dict[str, Any]:
        """Delete a note: pass the id `remember` returned ("collection:notes/..."), or a document id
        and its collection. Returns at once with the delete job."""
        doc_id = id
        if collection is None:
            collection, sep, doc_id = id.partition(":")
            if not sep or not doc_id:
                raise ToolError("pass the id remember returned (collection:notes/...) or a collection")
        job = _call(client.delete_document, collection, doc_id)
        return {"collection": collection, "doc_id": doc_id, "job_id": job["id"], "state": job["state"]}

    return server


def serve(client: Client) -> None:
    """Serve the tools over stdin/stdout until the client closes stdin."""
    build_server(client).run("stdio")
