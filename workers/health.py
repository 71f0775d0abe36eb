"""Health checks for the processes compose runs from the worker image, beyond what Celery offers:

    python -m workers.health beat --schedule /tmp/celerybeat-schedule

Beat answers no pings, but it writes its schedule file after each task it sends (beat_sync_every=1 in
shared/celeryconfig.py) and it sends the sweep every few seconds to a minute: a file older than a few
sweep intervals means beat is stuck or its clock loop died. Exit status 0 healthy, 1 not.

(A worker is checked with Celery's own `celery inspect ping` for its node.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shared.settings import load_settings

MISSED_SWEEPS = 3
# Beat's first sweep comes one interval after it starts; compose's start_period covers the wait.


def newest_write(schedule: Path) -> float | None:
    """When the schedule was last written (dbm backends may add a suffix such as .db or .dat)."""
    times = [p.stat().st_mtime for p in schedule.parent.glob(schedule.name + "*") if p.is_file()]
    return max(times) if times else None


def beat_healthy(schedule: Path, interval: float, now: float | None = None) -> tuple[bool, str]:
    written = newest_write(schedule)
    if written is None:
        return False, f"no schedule file at {schedule}"
    age = (time.time() if now is None else now) - written
    limit = MISSED_SWEEPS * interval + 10
    if age > limit:
        return False, f"{schedule} last written {age:.0f} s ago (limit {limit:.0f} s): beat sends nothing"
    return True, f"{schedule} written {age:.0f} s ago"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.health")
    sub = parser.add_subparsers(dest="process", required=True)
    beat = sub.add_parser("beat", help="beat keeps sending its periodic tasks")
    beat.add_argument("--schedule", type=Path, required=True, help="the file given to `celery beat --schedule`")
    args = parser.parse_args(argv)
    ok, why = beat_healthy(args.schedule, load_settings().sweep_interval)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
