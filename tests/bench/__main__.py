"""python -m tests.bench [--quick]: run every benchmark module, print the table, write the results."""

from __future__ import annotations

import argparse
import importlib
import logging
import time
import traceback

from tests.bench import MODULES
from tests.bench.report import machine, print_table, write_results

log = logging.getLogger("bench")


def run_module(name: str, quick: bool) -> list[dict]:
    """The module's rows, or one error row when it is missing or fails (the run goes on)."""
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"tests.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"tests.bench.{name}":
            raise
        return [{"name": f"{name}.error", "label": f"{name}: module missing", "value": None, "unit": "",
                 "target": None, "note": "not in this tree", "error": "missing"}]
    try:
        rows = module.run(quick)
    except Exception as exc:
        traceback.print_exc()
        return [{"name": f"{name}.error", "label": f"{name}: failed", "value": None, "unit": "", "target": None,
                 "note": f"{type(exc).__name__}: {str(exc)[:300]}", "error": "failed"}]
    for r in rows:
        r.setdefault("module_seconds", round(time.perf_counter() - started, 1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under 5 minutes); does not rewrite "
                                                             "BENCHMARKS.md")
    parser.add_argument("--only", default="", help="comma-separated modules to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = [m for m in MODULES if not args.only or m in args.only.split(",")]
    started = time.perf_counter()
    rows, seconds = [], {}
    for name in names:
        log.info("bench module=%s quick=%s", name, args.quick)
        t = time.perf_counter()
        rows += run_module(name, args.quick)
        seconds[name] = round(time.perf_counter() - t, 1)
        log.info("bench module=%s seconds=%.1f", name, seconds[name])
    total = time.perf_counter() - started
    print_table(rows)
    paths = write_results(rows, machine(), quick=args.quick, total_seconds=total, module_seconds=seconds,
                          modules=names)
    print(f"\n{len(rows)} rows in {total:.0f} s; wrote {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
