"""Layouts and forward-only migrations of the data dir and of Redis.

The data dir (`layout.json`) and Redis (`swapline:layout`) each record the layout they are written in.
`LAYOUT` is the one this release writes. Each process checks at start (an API process on its watcher's
first sync, a worker in its housekeeping): a layout newer than `LAYOUT` is refused (an older release
must not write over what it cannot read); an older one is migrated, step by step, by one process at a
time under a lock, every step safe to run again; an empty data dir or Redis is simply marked.

Layout 0 is everything written before layouts were recorded (up to release 2026-12-06): index versions
in format 1 or 2 (format 1 is converted by the next rebuild, `shared.jobs.build`), sources only in
Redis. Layout 1 keeps source records in the data dir as well. The fixtures under tests/fixtures/ are
data dirs and Redis dumps written by releases; each must load and serve with every later release
(tests/test_upgrade.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.jobs.fromdisk import save_sources
from shared.services import Services

log = logging.getLogger(__name__)

LAYOUT = 1
# How long one process may hold the migration lock (migrations are small: they rewrite records, never
# index data); another process waits for it, then finds the layout current.
LOCK_SECONDS = 300


class LayoutTooNew(RuntimeError):
    """The data dir or Redis was written by a newer release than this one."""


@dataclass(frozen=True)
class Migration:
    to: int  # the layout it leads to, from to - 1
    what: str
    data: Callable[[Services], object] | None = None  # the data dir's step
    redis: Callable[[Services], object] | None = None  # Redis's step


def _sources_to_disk(svc: Services) -> None:
    """Layout 1 keeps each collection's source records in the data dir too (`sources/{c}.json`), so
    `POST /v1/admin/recover` can re-create them; earlier releases kept them in Redis only."""
    for name in svc.collections.names():
        if svc.sources.of_collection(name):
            save_sources(svc, name)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "source records kept in the data dir", data=_sources_to_disk),
)


# Data dirs this process found (or made) current: each is checked once per process.
_current: set[str] = set()


def ensure(svc: Services) -> None:
    """`check` once per process (for a worker's tasks): LayoutTooNew every time until it passes."""
    if str(svc.storage.root) in _current:
        return
    check(svc)
    _current.add(str(svc.storage.root))


def data_layout(svc: Services) -> int | None:
    """The data dir's recorded layout: None for an empty one, 0 for one written before layouts."""
    path = svc.storage.layout_path()
    if path.is_file():
        return int(json.loads(path.read_text())["layout"])
    root = svc.storage.root
    if any((root / folder).is_dir() for folder in ("segments", "indexes")):
        return 0
    return None


def redis_layout(svc: Services) -> int | None:
    """Redis's recorded layout: None for an empty database, 0 for state written before layouts."""
    recorded = svc.layout.get()
    if recorded is not None:
        return recorded
    return 0 if svc.layout.holds_state() else None


def check(svc: Services) -> dict:
    """Refuse a newer layout; migrate an older one (waiting for another process doing it); mark an empty
    data dir or Redis. Returns what was found and done."""
    found = {"data": data_layout(svc), "redis": redis_layout(svc)}
    newer = {where: layout for where, layout in found.items() if layout is not None and layout > LAYOUT}
    if newer:
        where = " and ".join(f"{'the data dir' if w == 'data' else 'Redis'} is at layout {n}" for w, n in newer.items())
        raise LayoutTooNew(f"{where[0].upper()}{where[1:]}: written by a newer Swapline than this one "
                           f"(layout {LAYOUT}); run that release or a later one")
    if all(layout == LAYOUT for layout in found.values()):
        return {"found": found, "migrated": []}
    deadline = time.monotonic() + LOCK_SECONDS
    while (token := svc.upgrade_lock.acquire(LOCK_SECONDS)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("another process held the migration lock too long")
        time.sleep(0.5)
    try:
        return {"found": found, "migrated": _migrate(svc)}
    finally:
        svc.upgrade_lock.release(token)


def _migrate(svc: Services) -> list[str]:
    """Run what is missing, under the lock (read again: another process may have done it meanwhile)."""
    done = []
    for where, current, step_of, mark in (
            ("data", data_layout(svc), lambda m: m.data, lambda n: _mark_data(svc, n)),
            ("redis", redis_layout(svc), lambda m: m.redis, lambda n: svc.layout.set(n))):
        if current is None:  # empty: nothing to convert
            mark(LAYOUT)
            continue
        for migration in MIGRATIONS:
            if migration.to <= current:
                continue
            step = step_of(migration)
            if step is not None:
                step(svc)
            mark(migration.to)
            done.append(f"{where}:{migration.to}")
            log.info("event=upgrade.migrated where=%s layout=%s what=%r", where, migration.to, migration.what)
    return done


def _mark_data(svc: Services, layout: int) -> None:
    svc.storage.write_file(svc.storage.layout_path(), json.dumps({"layout": layout}).encode(),
                           "the data dir's layout marker")
