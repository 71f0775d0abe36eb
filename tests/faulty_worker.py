"""A Celery worker app for tests: the real workers.celery_app with faults injected into reading source
files. A path listed in SWAPLINE_TEST_FAIL_READS (`path:times,...`, times -1 = always) raises OSError
that many times (attempts are counted in files under SWAPLINE_TEST_FAULT_DIR, so every worker process
shares the count); SWAPLINE_TEST_READ_DELAY (seconds) slows every read, so that a batch lasts long
enough for another idle worker to take the next one. Start with
`procs.worker(settings, app="tests.faulty_worker", SWAPLINE_TEST_...=...)`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import shared.sources.batch as batch
from workers import tasks  # noqa: F401  (registers the tasks)
from workers.celery_app import app  # noqa: F401  (the app celery -A loads)

_real_read = batch.read_in_source


def _plan() -> dict[str, int]:
    out = {}
    for item in filter(None, os.environ.get("SWAPLINE_TEST_FAIL_READS", "").split(",")):
        path, _, times = item.rpartition(":")
        out[path] = int(times)
    return out


def _failing_read(folder: Path, rel_path: str, max_bytes: int):
    path = folder / rel_path
    time.sleep(float(os.environ.get("SWAPLINE_TEST_READ_DELAY") or 0))
    for rel, times in _plan().items():
        if str(path).endswith("/" + rel):
            marker = Path(os.environ["SWAPLINE_TEST_FAULT_DIR"]) / rel.replace("/", "__")
            with open(marker, "a") as fh:
                fh.write("x")
            if times < 0 or marker.stat().st_size <= times:
                raise OSError(5, "injected read error", str(path))
    return _real_read(folder, rel_path, max_bytes)


batch.read_in_source = _failing_read
