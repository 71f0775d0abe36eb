"""Which Chromium the browser tests drive, and how it is started.

Debian's /usr/bin/chromium when present (`.ci/run` installs it; Playwright's own download cannot reach
its CDN on every network), else the Chromium Playwright downloads with `python -m playwright install
chromium`, else a failure that names both ways to get one."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
# Flags for a root, offline, headless machine: no sandbox (root), and no background connections that a
# closed network would refuse.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MISSING = ("no Chromium for the browser tests: install Debian's (`apt-get install chromium`, as .ci/run "
           "does) or Playwright's own (`.venv/bin/python -m playwright install chromium`, needs the internet)")


class ChromiumMissing(RuntimeError):
    pass


def _executable(path: Path | str | None) -> bool:
    return bool(path) and Path(path).is_file() and os.access(path, os.X_OK)


def pick_chromium(bundled: str | None, debian: Path = DEBIAN_CHROMIUM) -> str | None:
    """The executable_path to hand Playwright: Debian's chromium, else None for Playwright's own
    (`bundled` is where Playwright expects it); ChromiumMissing when neither is installed."""
    if _executable(debian):
        return str(debian)
    if _executable(bundled):
        return None
    raise ChromiumMissing(MISSING)


def is_local(url: str) -> bool:
    """Requests a page may make when the network is cut: to this machine, or inline data."""
    if url.startswith(("data:", "blob:", "about:")):
        return True
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def block_network(page) -> tuple[list[str], list[str]]:
    """Abort every request of `page` that would leave this machine. Returns (every URL asked for, the
    blocked ones), filled as the page loads."""
    asked: list[str] = []
    blocked: list[str] = []

    def route(r):
        asked.append(r.request.url)
        if is_local(r.request.url):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort("internetdisconnected")

    page.route("**/*", route)
    return asked, blocked
