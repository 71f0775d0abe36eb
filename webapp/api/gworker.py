"""gunicorn's threaded worker, keeping a request thread on its keep-alive connection while the client's
next request follows at once.

gunicorn's `gthread` worker hands every request across two threads: the main thread's poller sees the
connection readable and queues it for a request thread; after the answer, the request thread hands the
connection back to the main thread (a pipe write), which registers it with the poller again. On a 2-vCPU
AMD EPYC Zen 4 that round costs about 0.15 ms of a search's HTTP time (a bare WSGI app behind gunicorn
on loopback: 0.41 ms a round trip through gthread, 0.27 ms with this worker).

Here a request thread that has answered waits up to LINGER_SECONDS for the same connection's next
request and serves it directly, but only while no other connection is waiting for a thread, so a busy
client never holds a thread that another connection needs. Anything else (a new connection, a client
that pauses longer, a stopping worker) takes gunicorn's own path.
"""

from __future__ import annotations

import select
import threading

from gunicorn.workers.gthread import ThreadWorker

# How long an answered connection keeps its request thread: a client sending its next request straight
# away (a loop of searches, an agent's tool calls) sends it within a fraction of a millisecond.
LINGER_SECONDS = 0.002


class KeepAliveThreadWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting = 0  # connections queued for a request thread
        self._waiting_lock = threading.Lock()

    def enqueue_req(self, conn):
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def handle(self, conn):
        with self._waiting_lock:
            self._waiting -= 1
        keepalive = super().handle(conn)
        while keepalive is True and self.alive and self._next_request_follows(conn):
            keepalive = super().handle(conn)
        return keepalive

    def _next_request_follows(self, conn) -> bool:
        """Whether the connection's next request is here (buffered, or readable within the linger) while
        no other connection waits for a thread. A client that closed reads as readable: the next
        `handle` sees the end of its stream and closes the connection, as gunicorn would."""
        if self._waiting:
            return False
        if conn.parser.unreader.buf.getvalue():
            return True
        try:
            return bool(select.select([conn.sock], [], [], LINGER_SECONDS)[0])
        except (OSError, ValueError):  # the socket went away: gunicorn's own path closes the connection
            return False
