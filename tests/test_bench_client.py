"""The benchmarks' plain-socket HTTP client (tests/bench/common.py LeanClient): it reads what http.client
reads from a real HTTP/1.1 server, keeps one connection, opens another after the server closes one, and
refuses an answer it cannot frame."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.bench.common import LeanClient, StdlibClient


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set = set()

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: bytes, close: bool = False, chunked: bool = False) -> None:
        Handler.connections.add(self.client_address)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Server-Timing", "app;dur=1.5")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            return
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self._answer(200, b"{}", chunked=True)
        else:
            self._answer(404 if self.path == "/missing" else 200, json.dumps({"path": self.path}).encode(),
                         close=self.path == "/close")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(200, json.dumps({"got": json.loads(body), "type": self.headers["Content-Type"]}).encode())


@pytest.fixture
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Handler.connections = set()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_lean_client_reads_what_http_client_reads(base):
    lean, stdlib = LeanClient(base), StdlibClient(base)
    for client in (lean, stdlib):
        answer = client.post("/v1/search", {"query": "grüße", "k": 3})
        assert answer.status_code == 200
        assert answer.json() == {"got": {"query": "grüße", "k": 3}, "type": "application/json"}
        assert answer.headers["server-timing"] == answer.headers["Server-Timing"] == "app;dur=1.5"
        assert client.get("/missing").status_code == 404
    assert [lean.get(f"/{i}").json() for i in range(20)] == [{"path": f"/{i}"} for i in range(20)]
    lean.close()
    stdlib.close()


def test_one_connection_is_kept_and_another_opened_after_the_server_closes_it(base):
    client = LeanClient(base)
    for _ in range(5):
        assert client.get("/a").status_code == 200
    assert len(Handler.connections) == 1
    assert client.get("/close").json() == {"path": "/close"}
    assert client.get("/b").json() == {"path": "/b"}
    assert len(Handler.connections) == 2
    client.close()


def test_an_answer_without_content_length_is_refused(base):
    with pytest.raises(RuntimeError, match="without Content-Length"):
        LeanClient(base).get("/chunked")
