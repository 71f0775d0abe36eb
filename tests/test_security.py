"""Security findings, one test (or a few) each, every one failing on the code before its fix.

Finding 2: names and ids from a caller (an agent through the MCP tools, a script through the client)
never leave their URL segment: against a local stub that records the raw request line, each request
either reaches exactly the route meant, with the value read back intact, or is refused before sending.
Finding 3: YAML front matter with aliases (a "billion laughs") is refused, so chunks stay small.
Finding 6b: per-document metadata is bounded (SWAPLINE_MAX_METADATA_BYTES), at the API and at ingest.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from urllib.parse import unquote

import pytest

from tests.support import LocalHTTP, QuietHandler
from webapp.cli.mcp_server import build_server
from webapp.client import ApiError, Client

pytestmark = pytest.mark.security

JOB_ID = "0123456789abcdef" * 2
ANSWER = {"id": JOB_ID, "kind": "delete", "collection": "docs", "state": "queued", "hits": [], "index_version": 1,
          "mode": "hybrid"}


class RecordingApi:
    """A local HTTP server answering every request with a job/search-shaped JSON; it records each raw
    request line (method and target exactly as sent, before any decoding)."""

    def __init__(self):
        self.lines: list[str] = []
        api = self

        class Handler(QuietHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.lines.append(self.requestline)
                method, target = self.requestline.split()[:2]
                status = 200 if method == "GET" or target.endswith("/search") else 202
                payload = json.dumps(ANSWER).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = answer

        self.server = LocalHTTP(Handler)
        self.url = self.server.url

    def targets(self) -> list[tuple[str, list[str]]]:
        """(method, raw path segments) of each request."""
        out = []
        for line in self.lines:
            method, target = line.split()[:2]
            assert "?" not in target and "#" not in target, line
            out.append((method, target.split("/")[1:]))
        return out

    def close(self):
        self.server.close()


@pytest.fixture
def stub():
    api = RecordingApi()
    yield api
    api.close()


@pytest.fixture
def client(stub):
    with Client(stub.url, retries=0, timeout=5) as c:
        yield c


def exactly_one(stub: RecordingApi, method: str, route: list[str | None], values: list[str]) -> None:
    """The stub saw one request, `method` on `route` (None where a value goes), each value in its own
    segment and read back (percent-decoded once, as a server does) exactly as given; besides it, only
    reads of the collection's status (MCP tools report whether it is being indexed)."""
    status_read = ("GET", route[:3])
    [(seen_method, segments)] = [t for t in stub.targets() if t != status_read]
    assert seen_method == method, stub.lines
    assert len(segments) == len(route), stub.lines
    given = iter(values)
    for segment, expected in zip(segments, route, strict=True):
        if expected is None:
            assert unquote(segment) == next(given), stub.lines
        else:
            assert segment == expected, stub.lines


HOSTILE_DOC_IDS = ["../../docs", "..", ".", "a/../../b", "notes/../../../v1/jobs", "%2e%2e", "%2E%2E/x",
                   "..%2F..%2Fdocs", "%252e%252e", "x?y=1", "x#frag", "%2F", "a%2Fb", "/etc/passwd", "a//b",
                   "docs/intro.md", ".hidden.md", "a b/ü.md"]


@pytest.mark.parametrize("doc_id", HOSTILE_DOC_IDS)
def test_a_document_id_stays_in_its_segment_or_is_refused(stub, client, doc_id):
    for call, method in ((client.delete_document, "DELETE"), (client.document, "GET")):
        stub.lines.clear()
        try:
            call("docs", doc_id)
        except ValueError:  # InvalidArgument
            assert stub.lines == [], f"refused, but only after sending {stub.lines}"
            continue
        exactly_one(stub, method, ["v1", "collections", "docs", "documents", None], [doc_id])


def test_the_reported_document_ids_are_refused_and_paths_keep_their_slash(stub, client):
    for doc_id in ("../../docs", "..", "a/./b", "%2e%2e"):
        with pytest.raises(ValueError):
            client.delete_document("docs", doc_id)
    assert stub.lines == []
    client.delete_document("docs", "docs/intro.md")
    assert stub.lines == ["DELETE /v1/collections/docs/documents/docs%2Fintro.md HTTP/1.1"]


HOSTILE_NAMES = ["..", ".", "../jobs/" + JOB_ID + "/cancel#", "docs/..", "docs/../jobs", "docs?x=1", "docs#",
                 "%2e%2e", "docs%2F..", "Docs", "", "docs\n"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_collection_name_is_checked_before_any_request(stub, client, name):
    calls = [lambda: client.collection(name), lambda: client.search(name, "q"), lambda: client.drop_collection(name),
             lambda: client.rebuild(name), lambda: client.documents(name), lambda: client.sources(name),
             lambda: client.add_documents(name, [{"id": "a", "text": "t"}]),
             lambda: client.delete_document(name, "a")]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert stub.lines == []


@pytest.mark.parametrize("job_id", ["../collections/docs", JOB_ID + "/../x", "..", "%2e%2e", JOB_ID.upper(),
                                    JOB_ID + "#", JOB_ID + "?a=b"])
def test_job_and_source_ids_are_checked_before_any_request(stub, client, job_id):
    for call in (client.job, client.cancel, lambda j: client.reconcile("docs", j),
                 lambda j: client.source("docs", j), lambda j: client.remove_source("docs", j)):
        with pytest.raises(ValueError):
            call(job_id)
    assert stub.lines == []
    client.cancel(JOB_ID)
    exactly_one(stub, "POST", ["v1", "jobs", None, "cancel"], [JOB_ID])


def call_tool(server, name: str, arguments: dict):
    """(is_error, structured content or error text) of one MCP tool call, in process."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        result = asyncio.run(server.call_tool(name, arguments))
    except ToolError as exc:
        return True, str(exc)
    if isinstance(result, tuple):  # (content, structured)
        return False, result[1]
    return bool(getattr(result, "is_error", False)), result


def test_mcp_tools_cannot_reach_another_route(stub, client):
    server = build_server(client)
    # The two reported: forget sent DELETE /v1/collections/docs, search sent POST /v1/jobs/<id>/cancel.
    cases = [
        ("forget", {"id": "docs:../../docs"}),
        ("forget", {"id": "docs:notes/../../../jobs/" + JOB_ID + "/cancel"}),
        ("forget", {"id": "docs:.."}),
        ("forget", {"id": "docs:%2e%2e"}),
        ("forget", {"id": "../jobs:x"}),
        ("forget", {"id": "x", "collection": "docs/.."}),
        ("search", {"collection": "../jobs/" + JOB_ID + "/cancel#", "query": "q"}),
        ("search", {"collection": "docs/../../v1/jobs/" + JOB_ID + "/cancel?", "query": "q"}),
        ("index_status", {"collection": ".."}),
        ("index_status", {"collection": "%2e%2e"}),
        ("remember", {"collection": "docs/..", "text": "a note"}),
        ("add_source", {"collection": "../jobs", "path": "/srv/x"}),
        ("reconcile", {"collection": "docs", "source_id": "../../../jobs/" + JOB_ID + "/cancel"}),
        ("reconcile", {"collection": "docs", "source_id": "%2e%2e"}),
    ]
    for tool, arguments in cases:
        stub.lines.clear()
        is_error, answer = call_tool(server, tool, arguments)
        assert is_error, (tool, arguments, answer, stub.lines)
        assert stub.lines == [], (tool, arguments, stub.lines)

    # What a tool should do still goes where it should, the id read back whole.
    stub.lines.clear()
    is_error, _ = call_tool(server, "forget", {"id": "docs:notes/abc?x#y"})
    assert not is_error
    exactly_one(stub, "DELETE", ["v1", "collections", "docs", "documents", None], ["notes/abc?x#y"])
    stub.lines.clear()
    is_error, _ = call_tool(server, "search", {"collection": "docs", "query": "../../x"})
    assert not is_error
    exactly_one(stub, "POST", ["v1", "collections", "docs", "search"], [])


@pytest.mark.integration
def test_the_api_reads_a_slash_sent_as_2f_back_into_the_document_id(settings, procs, rclient):
    """gunicorn and werkzeug's `<path:doc_id>` route: %2F arrives as `/` in the id (and `?`, `#`, `%`
    as themselves), on the document route: the delete job names exactly that id."""
    from shared import keys

    base = procs.api(settings)
    with Client(base, retries=0) as api:
        api.create_collection("docs")
        for doc_id in ("docs/intro.md", "a?b#c/d%2Fe", "trail/"):
            job = api.delete_document("docs", doc_id)
            assert (job["kind"], job["collection"]) == ("delete", "docs")
            options = json.loads(rclient.hget(keys.job(job["id"]), "options"))
            assert options["documents"] == [doc_id]
            with pytest.raises(ApiError) as missing:
                api.document("docs", doc_id)
            assert missing.value.status == 404 and repr(doc_id) in missing.value.message


# Finding 3: a YAML alias bomb in front matter.

def alias_bomb(levels: int = 6) -> str:
    """`a` is 9 strings, `b` 9 references to `a`, ... : a few hundred bytes, 9**levels strings expanded."""
    names = "abcdefghij"[:levels]
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in itertools.pairwise(names)]
    return "---\n" + "\n".join(lines) + "\n---\n"


def ingest_records(documents: list[dict], **settings) -> list[dict]:
    """The chunk records ingest would write (shared.jobs.ingest.chunk_documents) at these settings."""
    from types import SimpleNamespace

    from shared.index.tokens import WORDS
    from shared.jobs.ingest import chunk_documents
    from shared.settings import Settings

    svc = SimpleNamespace(settings=Settings(**settings), embedder=SimpleNamespace(tokenizer=WORDS))
    return chunk_documents(svc, documents)[0]


def test_an_alias_bomb_in_front_matter_gives_small_chunks():
    bomb = alias_bomb()
    assert len(bomb.encode()) < 400
    text = bomb + "# Title\n\n" + "\n\n".join(f"## Part {i}\n\nSome words about part {i}." for i in range(20))
    records = ingest_records([{"id": "bomb.md", "text": text}])
    assert len(records) >= 10
    for record in records:
        assert len(json.dumps(record)) < 2_000, len(json.dumps(record))
        assert "front_matter" not in record["metadata"]
        assert "alias" in record["metadata"]["front_matter_refused"]
        assert "x,x,x" not in record["text"]  # the refused block is not chunk text either


def test_front_matter_anchors_and_oversize_blocks_are_refused_plain_front_matter_kept():
    from shared.index.chunking import MAX_FRONT_MATTER_BYTES, split_front_matter

    assert split_front_matter("---\ntitle: Hello\ntags: [a, b]\n---\nbody\n") == (
        {"title": "Hello", "tags": ["a", "b"]}, "body\n")
    for text in ("---\na: &x 1\n---\nbody\n", "---\na: 1\nb: *x\n---\nbody\n",
                 "---\nbig: " + "y" * MAX_FRONT_MATTER_BYTES + "\n---\nbody\n"):
        front, rest = split_front_matter(text)
        assert front is None and rest == "body\n"


# Finding 6b: metadata bounded, at the API and at ingest.

def test_metadata_over_the_limit_is_refused_naming_the_document():
    from shared.errors import RequestRefused
    from shared.limits import check_documents
    from shared.settings import Settings

    defaults = Settings()
    assert defaults.max_metadata_bytes == 16384
    small = {"id": "a", "text": "t", "metadata": {"tags": ["x"] * 100}}
    big = {"id": "b", "text": "t", "metadata": {"blob": "y" * defaults.max_metadata_bytes}}
    check_documents([small], defaults)
    with pytest.raises(RequestRefused) as refused:
        check_documents([small, big], defaults)
    assert (refused.value.status, refused.value.code) == (422, "metadata_too_large")
    assert "documents[1]" in refused.value.message and "16384" in refused.value.message


def test_front_matter_over_the_metadata_limit_is_dropped_at_ingest_with_a_note():
    front = "---\n" + "\n".join(f"key{i}: {'v' * 200}" for i in range(100)) + "\n---\n"  # about 21 KB
    records = ingest_records([{"id": "wide.md", "text": front + "# T\n\nbody words", "metadata": {"team": "a"}}])
    assert records
    for record in records:
        assert len(json.dumps(record["metadata"])) <= 16384
        assert "front_matter" not in record["metadata"] and record["metadata"]["team"] == "a"
        assert "16384" in record["metadata"]["front_matter_dropped"]


@pytest.mark.integration
def test_the_api_answers_422_metadata_too_large(settings, procs):
    base = procs.api(settings)
    with Client(base, retries=0) as api:
        api.create_collection("docs")
        docs = [{"id": "ok", "text": "t"}, {"id": "big", "text": "t", "metadata": {"blob": "y" * 20_000}}]
        with pytest.raises(ApiError) as refused:
            api.add_documents("docs", docs)
    assert (refused.value.status, refused.value.code) == (422, "metadata_too_large")
    assert "documents[1]" in refused.value.message
