"""The benchmark runner's outputs (not its timings): pass/miss against targets, error rows for missing
or failing modules, and the files a run writes."""

from __future__ import annotations

import json

from tests.bench import MODULES
from tests.bench.__main__ import run_module
from tests.bench.common import row
from tests.bench.report import machine, verdict, write_results


def test_verdict_follows_the_target():
    assert verdict(row("a", "a", 1.2, "x", ("<=", 1.3))) == "pass"
    assert verdict(row("a", "a", 1.4, "x", ("<=", 1.3))) == "MISS"
    assert verdict(row("a", "a", 0.96, "fraction", (">=", 0.95))) == "pass"
    assert verdict(row("a", "a", 3.0, "ms")) == ""
    assert verdict(row("a", "a", None, "x", ("<=", 1.0))) == "n/a"


def test_a_missing_module_is_an_error_row_and_the_run_goes_on():
    [missing] = run_module("no_such_module", quick=True)
    assert missing["error"] == "missing" and verdict(missing) == "ERROR"


def test_a_full_run_writes_results_plot_and_benchmarks(tmp_path):
    samples = [(i * 0.1, 0.005, 200) for i in range(50)]
    rows = [row("m.ratio", "a ratio", 1.1, "x", ("<=", 1.5), note="n"),
            {**row("m.p99", "p99 during", 12.0, "ms"),
             "series": {"samples": samples, "rebuild_start": 1.0, "published": 3.0, "swapped": 3.5, "vectors": 10}}]
    written = write_results(rows, machine(), quick=False, total_seconds=60, module_seconds={}, modules=list(MODULES),
                            out=tmp_path / "bench", root=tmp_path)
    names = {p.name for p in written}
    assert names == {"results.json", "latency.png", "latency-series.json", "BENCHMARKS.md"}
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["machine"]["cores"] and not any("series" in r for r in results["rows"])
    assert "| a ratio | 1.1 | x | <= 1.5 | pass | n |" in (tmp_path / "BENCHMARKS.md").read_text()
    assert (tmp_path / "bench" / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_a_quick_run_leaves_benchmarks_md_alone(tmp_path):
    written = write_results([row("m.x", "x", 1.0, "x")], machine(), quick=True, total_seconds=1, module_seconds={},
                            modules=list(MODULES), out=tmp_path / "bench", root=tmp_path)
    assert [p.name for p in written] == ["results-quick.json"]
    assert not (tmp_path / "BENCHMARKS.md").exists()
