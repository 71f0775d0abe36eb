"""Fixtures of the chaos tests: a redis-server each test owns (append-only, so it can be restarted),
settings at Swapline's defaults (only the embedder and the pace of builds differ: the hashing embedder
keeps tests fast, and small paced build steps make a build last long enough to hit it mid-way), and
helpers that drive a real stack over HTTP."""

from __future__ import annotations

import time

import pytest
import redis
import requests

from shared import keys
from shared.settings import Settings
from tests.support import RedisServer, ingest, wait_for, wait_job


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def rdb(own_redis):
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def cfg(own_redis, tmp_path) -> Settings:
    """Default settings (lease 60 s, heartbeat 15 s, polls 2 s...) but for the embedder and build pace:
    300 documents build in about 40 steps of 8 vectors, 0.05 s apart."""
    return Settings(redis_url=own_redis.url, data_dir=tmp_path / "data", embedder="hash", build_step=8,
                    build_step_delay=0.05)


def corpus(n: int, tag: str = "alpha", offset: int = 0) -> list[dict]:
    return [{"id": f"{tag}-{i}", "text": f"# {tag} {i % 7}\nThe {tag} document {i} is about item{i}."}
            for i in range(offset, offset + n)]


def job(base: str, job_id: str) -> dict:
    return requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()


def stage_documents(base: str, n: int, tag: str = "alpha", name: str = "docs") -> None:
    """Documents ingested (no rebuild): what the next rebuild will index."""
    done = wait_job(base, ingest(base, corpus(n, tag), name=name, rebuild=False)["id"])
    assert done["state"] == "succeeded", done


def rebuild(base: str, name: str = "docs") -> str:
    resp = requests.post(f"{base}/v1/collections/{name}/rebuild", timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def published(base: str, name: str = "docs") -> int:
    """A rebuild of `name`, waited for; returns the version it published."""
    done = wait_job(base, rebuild(base, name), timeout=120)
    assert done["state"] == "succeeded", done
    return done["result"]["version"]


def wait_building(base: str, job_id: str, timeout: float = 60) -> dict:
    """The job once its build has added vectors (mid-build)."""
    return wait_for(lambda: (j := job(base, job_id))["progress"]["stage"] == "build" and j["progress"]["done"] > 0
                    and j, timeout=timeout, interval=0.05, message=f"rebuild {job_id} to be mid-build")


def publishes(rdb, name: str = "docs") -> list[int]:
    """The fences of every `index.published` event of the collection, oldest first."""
    import json

    return [json.loads(fields["data"])["fence"] for _, fields in rdb.xrange(keys.events())
            if fields["type"] == "index.published" and fields["collection"] == name]


def serving(base: str, name: str = "docs", query: str = "item1") -> int | None:
    resp = requests.post(f"{base}/v1/collections/{name}/search", json={"query": query, "k": 3}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["index_version"]


class SearchLoad:
    """Searches from several threads until stopped; records every answer (status, version, header)."""

    def __init__(self, base: str, threads: int = 4, name: str = "docs"):
        import threading

        self.base, self.name = base, name
        self.answers: list[tuple[int, int | None, str | None]] = []
        # The same answers per thread, in order: (status, version), so one thread's versions never go down.
        self.by_thread: list[list[tuple[int, int | None]]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                resp = session.post(f"{self.base}/v1/collections/{self.name}/search",
                                    json={"query": f"item{(i * 7 + n) % 50}", "k": 3}, timeout=10)
                body = resp.json() if resp.status_code == 200 else {}
                self.answers.append((resp.status_code, body.get("index_version"),
                                     resp.headers.get("X-Swapline-Degraded")))
                self.by_thread[i].append((resp.status_code, body.get("index_version")))
            except Exception as exc:  # recorded, and the test fails on it
                self.errors.append(f"{self.base}: {exc!r}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)
