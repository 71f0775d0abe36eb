"""The benchmark runner's outputs (not its timings): pass/miss against targets, error rows for missing
or failing modules, and the files a run writes."""

from __future__ import annotations

import json

from tests.bench import MODULES
from tests.bench.__main__ import run_module
from tests.bench.common import row
from tests.bench.report import machine, markdown, value_text, verdict, write_results


def test_verdict_follows_the_target():
    assert verdict(row("a", "a", 1.2, "x", ("<=", 1.3))) == "pass"
    assert verdict(row("a", "a", 1.4, "x", ("<=", 1.3))) == "MISS"
    assert verdict(row("a", "a", 0.96, "fraction", (">=", 0.95))) == "pass"
    assert verdict(row("a", "a", 3.0, "ms")) == ""
    assert verdict(row("a", "a", None, "x", ("<=", 1.0))) == "n/a"


def test_values_keep_the_digits_that_matter():
    assert value_text({"value": 0.99954, "unit": "fraction"}) == "0.99954"  # a cosine just above a 0.999 floor
    assert value_text(row("a", "a", 0.7292, "fraction")) == "0.7292"
    assert value_text(row("a", "a", 1.6177, "x")) == "1.62"
    assert value_text(row("a", "a", 12345.6, "ms")) == "12,346"
    assert value_text(row("a", "a", None, "ms")) == "-"


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


def test_a_full_run_of_some_modules_merges_into_the_last_full_results(tmp_path):
    out = tmp_path / "bench"
    write_results([row("core.a", "a", 1.0, "x"), row("million.b", "b", 2.0, "x")], machine(), quick=False,
                  total_seconds=60, module_seconds={"core": 1, "million": 2}, modules=list(MODULES), out=out,
                  root=tmp_path)
    first = json.loads((out / "results.json").read_text())
    write_results([row("million.b", "b again", 3.0, "x"), row("tenmillion.c", "c", 4.0, "x")], machine(),
                  quick=False, total_seconds=30, module_seconds={"million": 5, "tenmillion": 6},
                  modules=["million", "tenmillion"], out=out, root=tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["value"]) for r in results["rows"]] == [("core.a", 1.0), ("million.b", 3.0),
                                                                   ("tenmillion.c", 4.0)]
    assert results["module_dates"]["core"] == first["module_dates"]["core"]
    assert results["module_seconds"] == {"core": 1, "million": 5, "tenmillion": 6}
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| b again | 3 | x |" in text and "| a | 1 | x |" in text
    # Rows of runs on different dates say so, module by module.
    dated = markdown(results["rows"], machine(), "D2", 30, {"core": "D1", "million": "D2", "tenmillion": "D2"})
    assert "each module's rows date from its run (D1: core; D2: million, tenmillion)" in dated


def test_a_merge_keeps_rows_from_other_cpus_and_says_which_cpu_measured_which_module(tmp_path):
    out = tmp_path / "bench"
    first = machine()
    write_results([row("core.a", "a", 1.0, "x"), row("latency.r", "r", 1.5, "x"),
                   {**row("latency.zen4_r", "EPYC Zen 4: r", 1.31, "x"), "measured_on": "EPYC Zen 4, b91b423"},
                   {**row("latency.old_r", "old r", 9.0, "x"), "measured_on": "elsewhere"}],
                  {**first, "cpu": "AMD EPYC"}, quick=False, total_seconds=60, module_seconds={},
                  modules=list(MODULES), out=out, root=tmp_path)
    # The new run makes latency.r and a row of latency.old_r's name: the older old_r is replaced by it.
    write_results([row("latency.r", "r", 1.15, "x"), row("latency.old_r", "old r now", 2.0, "x")],
                  {**first, "cpu": "Intel Xeon"}, quick=False, total_seconds=30, module_seconds={},
                  modules=["latency"], out=out, root=tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["value"]) for r in results["rows"]] == [
        ("core.a", 1.0), ("latency.r", 1.15), ("latency.old_r", 2.0), ("latency.zen4_r", 1.31)]
    assert results["module_machines"]["latency"] == "Intel Xeon"
    assert results["module_machines"]["core"] == "AMD EPYC"
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "Machine: AMD EPYC (core, embed, calibrate, concurrency, million" in text
    assert "; Intel Xeon (latency)," in text


def test_the_cpu_is_named_with_its_family_model_and_vector_instructions(tmp_path):
    from tests.bench.report import cpu_name

    def named(model: str, flags: str) -> str:
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: {model}\n"
                        f"flags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: other\n")
        return cpu_name(info)

    assert named("AMD EPYC", "fpu avx2 avx512f avx512_bf16") == "AMD EPYC (family 25 model 17; AVX-512 bf16, AVX2)"
    assert named("AMD EPYC", "fpu avx2") == "AMD EPYC (family 25 model 17; AVX2)"
    assert named("Intel(R) Xeon(R) Processor", "avx2 avx512f avx512_bf16 amx_bf16").startswith(
        "Intel(R) Xeon(R) Processor (family 25 model 17; AMX, AVX-512 bf16")
