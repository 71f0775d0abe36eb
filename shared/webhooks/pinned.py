"""One HTTP POST to an address already checked, within a total deadline, reading a bounded answer.

Why not `requests.post(url)`: it resolves the name again, so a resolver that answered a public address
to `targets.check` can answer 127.0.0.1 to the connection (DNS rebinding with a zero TTL). Here the
connection goes to one of the checked addresses (the next one if a connect fails), while the request
keeps the name: http.client writes it into the Host header, and TLS sends it as SNI and verifies the
certificate against it. No proxy from the environment is used and redirects are not followed.

A receiver cannot hold a worker: connect, TLS, sending and the answer share one deadline (a timer shuts
the socket down when it passes, so a receiver trickling a byte at a time is cut too, not only one that
goes quiet), and at most MAX_RESPONSE_BYTES of the body are read. Only the status matters; the rest of
the body is never read.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 64 * 1024
READ_CHUNK = 16 * 1024


class DeadlineExceeded(TimeoutError):
    """The attempt (connect, TLS, send, answer) took longer than its total deadline."""


@dataclass(frozen=True)
class Answer:
    status: int
    body_bytes: int  # bytes of the body read, at most MAX_RESPONSE_BYTES
    complete: bool  # the body ended before the cap, the deadline or a broken connection


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to `host` (Host header) made to one of `addresses`, which were checked."""

    def __init__(self, host: str, port: int, addresses: list[str], deadline: float):
        super().__init__(host, port)
        self.addresses = addresses
        self.deadline = deadline
        self.cut_off = False
        # Kept apart from `sock`, which http.client drops once a response that ends with the
        # connection takes it over: the timer must still reach it then.
        self.pinned: socket.socket | None = None

    def connect(self) -> None:
        failure: OSError = DeadlineExceeded("no time left to connect")
        for address in self.addresses:
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            try:
                # Every later read and write waits at most what was left then; cut() bounds the sum.
                self.sock = socket.create_connection((address, self.port), left)
            except OSError as exc:
                failure = exc
                continue
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pinned = self.sock
            return
        raise failure

    def cut(self) -> None:
        """Called by the deadline's timer: whatever the request is waiting on ends now."""
        self.cut_off = True
        sock = self.pinned
        if sock is not None:
            try:
                # The plain socket's shutdown, also under TLS: wakes a blocked read without touching the
                # TLS object another thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet, or already closed


class _PinnedHTTPS(_PinnedHTTP):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, addresses: list[str], deadline: float, context: ssl.SSLContext):
        super().__init__(host, port, addresses, deadline)
        self.context = context

    def connect(self) -> None:
        super().connect()
        # SNI and the certificate check are on the name, not on the address connected to.
        self.sock = self.pinned = self.context.wrap_socket(self.sock, server_hostname=self.host)
        if self.cut_off:  # the timer fired while the plain socket was being handed to TLS
            raise DeadlineExceeded("no time left after the TLS handshake")


@functools.lru_cache(maxsize=1)
def _default_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # verifies the chain and the host name


def post(url: str, addresses: list[str], body: bytes, headers: dict[str, str], timeout: float,
         context: ssl.SSLContext | None = None) -> Answer:
    """POST `body` to `url`, connecting only to `addresses` (the checked ones), all within `timeout`
    seconds. Raises OSError (DeadlineExceeded past the deadline, ssl errors) or http.client.HTTPException."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout
    conn: _PinnedHTTP
    if parts.scheme == "https":
        conn = _PinnedHTTPS(host, parts.port or 443, addresses, deadline, context or _default_context())
    else:
        conn = _PinnedHTTP(host, parts.port or 80, addresses, deadline)
    timer = threading.Timer(timeout, conn.cut)
    timer.daemon = True
    timer.start()
    try:
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            if conn.cut_off:  # headers cut short read as if they had ended: not an answer
                raise DeadlineExceeded("the answer's headers were cut off")
        except (OSError, http.client.HTTPException) as exc:
            if conn.cut_off or time.monotonic() >= deadline:
                raise DeadlineExceeded(f"no answer within the attempt's deadline of {timeout:g} s") from exc
            raise
        read, complete = 0, False
        try:
            while read < MAX_RESPONSE_BYTES:
                chunk = resp.read1(min(READ_CHUNK, MAX_RESPONSE_BYTES - read))
                if not chunk:
                    complete = not conn.cut_off
                    break
                read += len(chunk)
        except (OSError, http.client.HTTPException):
            pass  # the status arrived; a body cut short changes nothing
        return Answer(resp.status, read, complete)
    finally:
        timer.cancel()
        conn.close()
        if conn.pinned is not None:
            conn.pinned.close()  # http.client may have handed it to the response
