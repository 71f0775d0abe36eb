"""What the benchmark modules share: result rows, percentiles, a real stack (redis-server, celery
workers, gunicorn API processes) started and stopped around a measurement, and HTTP helpers."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import redis
import requests

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CORPUS = ROOT / "webapp" / "devstack" / "sample_corpus"


def row(name: str, label: str, value: float | None, unit: str, target: tuple[str, float] | None = None,
        note: str = "", **extra) -> dict:
    """One measurement in the shared row shape (see tests/bench/__init__.py)."""
    return {"name": name, "label": label, "value": None if value is None else round(float(value), 4), "unit": unit,
            "target": {"op": target[0], "value": target[1]} if target else None, "note": note, **extra}


def written_version(indexes_dir: Path, index, records: list[dict], manifest: dict, fence: int = 1):
    """A format-2 version (what every rebuild writes) of `index` and its `records` under `indexes_dir`:
    written as v{fence} over one part, verified as a worker does, opened as an API process does."""
    from shared.index.parts import open_version, verify_version
    from tests.support import write_part_version

    directory = write_part_version(indexes_dir, fence, index, records, manifest)
    verify_version(directory)
    return open_version(directory, fence)


def search_records(version, query, k: int) -> list[tuple[float, dict]]:
    """(score, chunk record) of the `k` nearest rows: what a vector search pays before fusion and JSON."""
    return [(score, version.record(row)) for row, score in version.nearest(query, k)]


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float:
    return 1000.0 * seconds


class Headers:
    """An answer's header lines, looked up case-insensitively; parsed on first look-up (after the timed
    round trip)."""

    def __init__(self, head: bytes):
        self._head = head
        self._parsed: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = {}
            for line in self._head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                self._parsed[name.strip().lower()] = value.strip()
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._all()[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._all().get(name.lower(), default)


class Answer:
    """What a bench client read back: status, headers (case-insensitive look-up) and body."""

    def __init__(self, status: int, headers, body: bytes):
        self.status_code, self.headers, self.content = status, headers, body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class LeanClient:
    """One keep-alive HTTP/1.1 connection on a plain socket: the request written in one send, the answer
    read by its Content-Length, its headers parsed only when looked at. What a request costs the service
    and the loopback, with next to no client work in the figure (as wrk measures it); `latency` reports
    the same searches through http.client (`StdlibClient`) and requests.Session beside. Answers the API
    writes carry a Content-Length (a chunked one is refused, not misread). A connection the server closed
    is opened again once."""

    def __init__(self, base: str, timeout: float = 60.0):
        url = urlsplit(base)
        self._address = (url.hostname or "127.0.0.1", url.port or 80)
        self._host = url.netloc.encode()
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=self._timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf = b""
        return self._sock

    def _recv(self, sock: socket.socket) -> None:
        data = sock.recv(262144)
        if not data:
            raise ConnectionResetError("the server closed the connection")
        self._buf += data

    def _send(self, method: str, path: str, payload: bytes | None) -> Answer:
        sock = self._connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: ".encode() + self._host
        if payload is not None:
            head += b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(payload)).encode()
        sock.sendall(head + b"\r\n\r\n" + (payload or b""))
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            self._recv(sock)
        raw_head, self._buf = self._buf[:end], self._buf[end + 4:]
        status = int(raw_head[9:12])
        lowered = raw_head.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"answer without Content-Length: {raw_head[:200]!r}")
        stop = lowered.find(b"\r\n", at + 2)
        length = int(lowered[at + 17:stop if stop >= 0 else None])
        while len(self._buf) < length:
            self._recv(sock)
        body, self._buf = self._buf[:length], self._buf[length:]
        if b"\r\nconnection: close" in lowered:
            self.close()
        return Answer(status, Headers(raw_head), body)

    def request(self, method: str, path: str, body: dict | None = None) -> Answer:
        payload = None if body is None else json.dumps(body).encode()
        try:
            return self._send(method, path, payload)
        except (ConnectionResetError, BrokenPipeError):
            self.close()  # the next request opens a new connection
            return self._send(method, path, payload)

    def post(self, path: str, body: dict) -> Answer:
        return self.request("POST", path, body)

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buf = None, b""


class StdlibClient(LeanClient):
    """The same keep-alive connection through the standard library's http.client (its request building
    and header parsing in the figure)."""

    def __init__(self, base: str, timeout: float = 60.0):
        url = urlsplit(base)
        self._conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout)

    def _send(self, method: str, path: str, payload: bytes | None) -> Answer:
        self._conn.request(method, path, payload, {} if payload is None else {"Content-Type": "application/json"})
        resp = self._conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())

    def close(self) -> None:
        self._conn.close()


def server_timing(resp) -> dict[str, float]:
    """An answer's Server-Timing header as seconds by name (`embed`, `search` on a search; `app` on every answer)."""
    return {name.strip(): float(dur) / 1000 for name, dur in
            (part.split(";dur=") for part in resp.headers["Server-Timing"].split(","))}


# The KEP tree beside the project when it is there (../shared/corpora), else the part of it shipped with
# the dev stack: one corpus for every benchmark that embeds markdown.
CORPUS_DIRS = (ROOT.parent / "shared" / "corpora" / "kubernetes-enhancements" / "keps", SAMPLE_CORPUS / "keps")


def corpus_documents(limit_files: int | None = None) -> list[dict]:
    """The first `limit_files` (all when None) KEP markdown files, in path order, as documents."""
    for folder in CORPUS_DIRS:
        files = sorted(folder.rglob("*.md"))[:limit_files] if folder.is_dir() else []
        if files:
            return [{"id": str(p.relative_to(folder)), "text": p.read_text(errors="replace")} for p in files]
    raise RuntimeError(f"no markdown files under {' or '.join(map(str, CORPUS_DIRS))}")


def job_seconds(job: dict) -> float:
    """Wall time of a finished job, from its started_at / finished_at stamps."""
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


@dataclass
class Stack:
    """A running stack: its settings, Redis client, API base URLs and processes."""

    settings: Settings
    redis: redis.Redis
    apis: list = field(default_factory=list)  # (Proc, base url)
    workers: list = field(default_factory=list)
    workdir: Path = Path(".")

    @property
    def base(self) -> str:
        return self.apis[0][1]

    def add_worker(self, name: str, concurrency: int = 1):
        from tests.support import start_worker

        proc = start_worker(self.settings, self.workdir, name=name, concurrency=concurrency)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.workers.clear()

    def api_pid(self, i: int = 0) -> int:
        """The pid of the gunicorn worker (the process that serves and holds the index) of API `i`."""
        import psutil

        children = psutil.Process(self.apis[i][0].popen.pid).children()
        return children[0].pid if children else self.apis[i][0].popen.pid


@contextlib.contextmanager
def stack(settings: Settings, apis: int = 1, workers: int = 1, api_threads: int = 8) -> Iterator[Stack]:
    """redis-server, `workers` celery worker processes and `apis` gunicorn API processes on `settings`
    (its redis_url and data_dir are replaced by a throwaway server and folder); everything is stopped
    on exit."""
    from tests.support import start_api, start_redis_server

    with tempfile.TemporaryDirectory(prefix="swapline-bench-") as tmp:
        workdir = Path(tmp)
        server, url, _ = start_redis_server(workdir)
        settings = replace(settings, redis_url=url, data_dir=workdir / "data")
        running = Stack(settings, redis.Redis.from_url(url, decode_responses=True), workdir=workdir)
        try:
            for i in range(apis):
                running.apis.append(start_api(settings, workdir, name=f"api{i + 1}", threads=api_threads))
            for i in range(workers):
                running.add_worker(f"w{i + 1}")
            yield running
        except BaseException:
            # The folder (and every process's log) goes with the stack: show where it failed first.
            for proc, _ in running.apis:
                print(f"--- last lines of {proc.name}'s log ---\n" + "\n".join(proc.log().splitlines()[-40:]),
                      file=sys.stderr)
            raise
        finally:
            running.stop_workers()
            for proc, _ in running.apis:
                proc.stop()
            running.redis.close()
            server.terminate()
            server.wait(10)


def submit(base: str, collection: str, docs: list[dict], rebuild: bool = False) -> dict:
    """POST a batch of documents; returns the (queued) ingest job. A full queue (503) is waited out."""
    while True:
        resp = requests.post(f"{base}/v1/collections/{collection}/documents",
                             json={"documents": docs, "rebuild": rebuild}, timeout=120)
        if resp.status_code != 503:
            break
        time.sleep(float(resp.headers.get("Retry-After", "1")))
    if resp.status_code != 202:
        raise RuntimeError(f"submit failed: {resp.status_code} {resp.text[:300]}")
    return resp.json()


def wait_all(base: str, job_ids: list[str], timeout: float) -> list[dict]:
    """Wait for every job to finish; raises if any did not succeed."""
    from tests.support import wait_job

    deadline = time.monotonic() + timeout
    jobs = [wait_job(base, job_id, max(1.0, deadline - time.monotonic())) for job_id in job_ids]
    failed = [j for j in jobs if j["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed, first: {failed[0]}")
    return jobs


def rebuild(base: str, collection: str, timeout: float) -> dict:
    """Ask for a rebuild and wait for it; returns the finished job."""
    from tests.support import wait_job

    resp = requests.post(f"{base}/v1/collections/{collection}/rebuild", timeout=30)
    if resp.status_code != 202:
        raise RuntimeError(f"rebuild refused: {resp.status_code} {resp.text[:300]}")
    job = wait_job(base, resp.json()["id"], timeout)
    if job["state"] != "succeeded":
        raise RuntimeError(f"rebuild failed: {job}")
    return job


def wait_served(base: str, collection: str, version: int, timeout: float = 300.0) -> None:
    """Wait until the API process at `base` serves `version` of the collection."""
    from tests.support import wait_for

    wait_for(lambda: requests.post(f"{base}/v1/collections/{collection}/search", json={"query": "probe", "k": 1},
                                   timeout=30).json().get("index_version") == version,
             timeout=timeout, interval=0.2, message=f"{base} to serve version {version}")


def api_query_embedder(base: str, settings: Settings, timeout: float = 300.0):
    """In this process, the runtime the API at `base` embeds queries with, at the API's thread count: an
    in-process figure compared with the API's must embed as the API does. With SWAPLINE_EMBEDDER=minilm
    that is the host's calibrated choice, once the API has switched to it (every /readyz answer of
    several in a row, so each worker process behind `base` has)."""
    from shared.index.embedders import make_embedder, make_runtime
    from tests.support import wait_for

    if settings.embedder != "minilm":
        return make_embedder(settings, threads=settings.api_torch_threads)
    seen: list[str | None] = []

    def settled() -> str | None:
        status = requests.get(f"{base}/readyz", timeout=30).json()["checks"]["embedder"]
        recorded = status["calibration"]["state"] == "recorded"
        seen.append(status["runtime"] if recorded and status["runtime"] == status["calibration"]["query"] else None)
        last = seen[-6:]
        return last[0] if len(last) == 6 and last[0] is not None and len(set(last)) == 1 else None

    runtime = wait_for(settled, timeout=timeout, interval=0.5, message="the API's calibrated query runtime")
    return make_runtime(str(runtime), settings, settings.api_torch_threads)


def reset_commandstats(client: redis.Redis) -> None:
    client.config_resetstat()


def redis_commands(client: redis.Redis) -> int:
    """Commands Redis ran since the last CONFIG RESETSTAT (from INFO commandstats)."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config")
