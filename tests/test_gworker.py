"""The API's gunicorn worker (webapp/api/gworker.py), in a real gunicorn process: a keep-alive
connection's requests are answered one after another on the thread that answered the first, a client
that pauses is answered through gunicorn's poller as before, and a connection whose requests never stop
coming does not keep another connection from its turn."""

from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path

import pytest

from tests.support import BIN, Proc, free_port, wait_for

APP = '''
import threading

def app(environ, start_response):
    environ["wsgi.input"].read()
    body = str(threading.get_ident()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.fixture
def server(tmp_path: Path):
    """A gunicorn process with the API's worker class and ONE request thread; yields its port."""
    (tmp_path / "tinyapp.py").write_text(APP)
    port = free_port()
    proc = Proc("gunicorn", [str(BIN / "gunicorn"), "--chdir", str(tmp_path), "--bind", f"127.0.0.1:{port}",
                             "--workers", "1", "--threads", "1", "--keep-alive", "5",
                             "--worker-class", "webapp.api.gworker.KeepAliveThreadWorker", "tinyapp:app"],
                {**os.environ, "PYTHONUNBUFFERED": "1"}, tmp_path)
    try:
        wait_for(lambda: _get(port) == 200, timeout=30, message="gunicorn up")
        yield port
    finally:
        proc.stop()
        assert "Traceback" not in proc.log(), proc.log()


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def _ask(conn: http.client.HTTPConnection) -> str:
    conn.request("POST", "/", b"{}", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and not resp.will_close
    return resp.read().decode()


def test_back_to_back_requests_and_a_paused_client_are_answered_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    threads = {_ask(conn) for _ in range(50)}
    time.sleep(0.05)  # past the linger: the connection goes back to gunicorn's poller
    threads.add(_ask(conn))
    conn.close()
    assert len(threads) == 1  # the one request thread, whichever path brought each request


def test_a_connection_that_never_pauses_does_not_starve_another(server):
    """With one request thread, a client that sends its next request the moment it has an answer would
    hold that thread forever if the thread stayed with it regardless; another connection gets its turn."""
    stop, busy_answers = threading.Event(), []

    def busy() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        while not stop.is_set():
            busy_answers.append(_ask(conn))
        conn.close()

    hammer = threading.Thread(target=busy)
    hammer.start()
    try:
        wait_for(lambda: len(busy_answers) > 20, timeout=10, message="the busy client under way")
        other = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        started = time.monotonic()
        _ask(other)
        waited = time.monotonic() - started
        other.close()
        answered_before = len(busy_answers)
        wait_for(lambda: len(busy_answers) > answered_before, timeout=10, message="the busy client served again")
    finally:
        stop.set()
        hammer.join(15)
    # About 1 ms here (the busy request in flight); without the check for waiting connections, seconds:
    # until the busy client happened to pause past the linger.
    assert waited < 0.5, f"the second connection waited {waited:.2f} s for the busy one's thread"
