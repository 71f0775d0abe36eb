"""`swapline mcp`: a Model Context Protocol server over stdio, for agents, on top of the REST API.

Each tool is a few REST calls through the same HTTP client as the CLI (SWAPLINE_URL,
SWAPLINE_API_KEY), so it answers in the time of those calls: a search reads the version the API serves,
`index_status` reads the collection's status, `remember` and `forget` return the job the API queued
without waiting for it. Nothing a tool does waits for an ingest or a rebuild.

Every answer says what it stands on: `version` (the index version served), `indexing` (whether a job
is indexing the collection now) with its `progress` (stage, done, total, eta_seconds). A search groups
hits by document and fits them to `max_tokens` by default, says how many `tokens` it returned, marks
hits of files changed on disk since indexed `stale`, and says so (`message`) when the collection is
still being built instead of answering a bare empty list.

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
# What a search returns by default: an agent's context is the scarce thing, so one result per file with
# its passages, cut to this many model tokens (measured in README "Agents (MCP)").
DEFAULT_MAX_TOKENS = 2000
HIT_KEYS = ("doc_id", "chunk_id", "score", "text", "lines", "heading_path", "metadata", "vector_rank",
            "keyword_rank", "stale")
RESULT_KEYS = ("doc_id", "score", "heading_path", "metadata", "vector_rank", "keyword_rank", "stale")
PASSAGE_KEYS = ("text", "start_line", "end_line", "score")
NOTE_PREFIX = "notes/"
INSTRUCTIONS = (
    "Swapline indexes documents into named collections and searches them by meaning and by exact words. "
    "Use `search` to find passages (the collection's default mode, hybrid unless set; keyword for exact "
    "identifiers), `index_status` "
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


def standing(info: dict) -> dict[str, Any]:
    """What every tool answer carries, from the collection's status: the index version published
    (which the API processes serve), whether a job is indexing it now, and that job's progress."""
    running = info.get("running_job")
    progress = None
    if running:
        done = running.get("progress") or {}
        progress = {"job_id": running.get("id"), "kind": running.get("kind"), "stage": done.get("stage"),
                    "done": done.get("done"), "total": done.get("total"), "eta_seconds": done.get("eta_seconds")}
    return {"version": (info.get("index") or {}).get("version"),
            "indexing": bool(running or info.get("pending_rebuild") or info.get("lock")), "progress": progress}


def building_message(collection: str, state: dict) -> str:
    """What a search on a collection still being built says instead of an empty list."""
    progress = state["progress"] or {}
    parts = [f"{progress.get('kind')} {progress.get('stage') or ''}".strip()] if progress else []
    if progress.get("total"):
        parts.append(f"{progress.get('done')}/{progress.get('total')}")
    if progress.get("eta_seconds") is not None:
        parts.append(f"about {progress['eta_seconds']:.0f} s left")
    detail = f" ({', '.join(parts)})" if parts else ""
    return (f"collection {collection!r} is still being indexed{detail}: nothing is searchable yet; ask "
            "index_status, or search again once it is done")


def shape_hit(hit: dict) -> dict[str, Any]:
    """A hit as the tool returns it: a grouped result keeps its passages, a chunk hit its text."""
    if "passages" in hit:
        out = {key: hit[key] for key in RESULT_KEYS if key in hit}
        out["passages"] = [{key: p.get(key) for key in PASSAGE_KEYS} for p in hit["passages"]]
        return out
    return {key: hit[key] for key in HIT_KEYS if key in hit}


def note_handle(collection: str, doc_id: str) -> str:
    """What `remember` returns and `forget` takes: the collection and the note's document id."""
    return f"{collection}:{doc_id}"


def build_server(client: Client) -> MCPServer:
    server = MCPServer("swapline", instructions=INSTRUCTIONS)

    def standing_of(collection: str) -> dict[str, Any]:
        return standing(_call(client.collection, collection))

    @server.tool()
    def search(collection: str, query: str, k: int = 5, filter: dict[str, Any] | None = None,
               mode: str | None = None, group_by: str | None = "document",
               max_tokens: int | None = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
        """Search a collection. `filter` narrows to documents by metadata, e.g. {"type": "note"},
        {"metadata.tags": "infra"}, {"path_prefix": "docs/"}, {"source": {"in": ["a", "b"]}}.
        `mode` is hybrid (meaning and exact words), vector or keyword; by default the collection's
        default_mode. By default one result per document with its passages (line ranges) and at most
        `max_tokens` model tokens of text in all (`tokens` says how many, `truncated` whether some was
        cut); `group_by` "none" returns one hit per chunk. A hit whose file changed on disk since it was
        indexed has `stale` true."""
        grouping = None if group_by in (None, "", "none") else group_by
        answer = _call(client.search, collection, query, k, mode=mode, filter=filter, group_by=grouping,
                       max_tokens=max_tokens)
        info = _call(client.collection, collection)
        now = standing(info)
        out = {"collection": collection, **now, "version": answer["index_version"],
               "index_version": answer["index_version"], "mode": answer.get("mode"), "group_by": grouping,
               "hits": [shape_hit(hit) for hit in answer["hits"]], "tokens": answer.get("tokens"),
               "truncated": answer.get("truncated")}
        nothing_built = answer["index_version"] is None or not (info.get("index") or {}).get("vectors") \
            or not info.get("documents")
        if not out["hits"] and now["indexing"] and nothing_built:
            out["message"] = building_message(collection, now)
        return out

    @server.tool()
    def index_status(collection: str) -> dict[str, Any]:
        """Whether the collection is being indexed right now (with progress and ETA), its counts by
        document type, and the last rebuild (the version served and when it was built)."""
        info = _call(client.collection, collection)
        running = info.get("running_job")
        index = info.get("index") or {}
        return {
            "collection": collection,
            **standing(info),
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
                "job_id": job["id"], "state": job["state"], **standing_of(collection)}

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
        return {"collection": collection, "source_id": source_id, "job_id": job["id"], "state": job["state"],
                **standing_of(collection)}

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
                "job_id": job["id"], "state": job["state"], **standing_of(collection)}

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
        return {"collection": collection, "doc_id": doc_id, "job_id": job["id"], "state": job["state"],
                **standing_of(collection)}

    return server


def serve(client: Client) -> None:
    """Serve the tools over stdin/stdout until the client closes stdin."""
    build_server(client).run("stdio")
