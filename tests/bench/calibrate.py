"""Embedder calibration on this host, as a worker's first start runs it, printed as a table:

    .venv/bin/python -m tests.bench.calibrate [--passes N] [--chunks N]

In `make bench` (`run`): the same, as rows: each candidate's chunks/s, cosine, hits@5 and one-query p50,
and the chosen ingest runtime's rate over torch fp32's against the issue's target (>= 2.5x).

Every candidate runtime (torch fp32, torch bf16 where the CPU has it, ONNX fp32, ONNX int8) on the
committed set (shared/index/calibration_set.json) with the worker's and the API's thread counts from the
environment's settings; throughput is the best of N alternating passes. Writes nothing to the data dir:
the record goes to a temporary one (ONNX exports are reused from test-artifacts/bench-models/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from shared.index import calibration
from shared.index.onnxembed import VARIANTS, exported_model
from shared.settings import load_settings
from tests.bench.embed import MODELS_DIR


def measure(passes: int = calibration.PASSES, chunks: int | None = None) -> tuple[dict, float]:
    """A calibration record measured in a temporary data dir, and its seconds."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for variant in VARIANTS:
        exported_model(MODELS_DIR, variant)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(os.environ).with_(data_dir=Path(tmp))
        shutil.copytree(MODELS_DIR, Path(tmp) / "models")
        started = time.monotonic()
        record = calibration.calibrate(settings, calibration.load_set(chunks=chunks), passes=passes)
    return record, time.monotonic() - started


def _row(name: str, label: str, value: float, unit: str, note: str, target: dict | None = None) -> dict:
    return {"name": f"calibrate.{name}", "label": label, "value": value, "unit": unit, "target": target, "note": note}


def run(quick: bool) -> list[dict]:
    record, seconds = measure(passes=1 if quick else calibration.PASSES, chunks=64 if quick else None)
    figures, host = record["candidates"], record["host"]
    note = (f"{record['texts']} chunks, {record['queries']} queries, {host['worker_threads']} threads "
            f"({host['query_threads']} per query), {host['cpu']}, load {record['load'][0]}")
    torch_rate = figures[calibration.REFERENCE]["chunks_per_s"]
    rows = []
    for name, fig in figures.items():
        kept = "kept" if fig["kept"] else f"refused: {fig['refused']}"
        rows += [_row(f"chunks_per_s.{name}", f"calibration chunks/s, {name}", fig["chunks_per_s"], "chunks/s",
                      f"{note}; {kept}"),
                 _row(f"cosine_min.{name}", f"calibration cosine to torch fp32, min, {name}", fig["cosine_min"],
                      "fraction", note, None if name == calibration.REFERENCE else
                      {"op": ">=", "value": calibration.COSINE_FLOOR}),
                 _row(f"hits_at_5.{name}", f"calibration hits@5 (set's chunks), {name}", fig["hits_at_5"],
                      "fraction", note),
                 _row(f"query_p50.{name}", f"calibration one query p50, {name}", fig["query_p50_ms"], "ms", note)]
    chosen = record["ingest"]
    rows.append(_row("ingest_ratio", f"ingest embed rate, chosen runtime / torch fp32 ({host['cpu']})",
                     round(figures[chosen]["chunks_per_s"] / torch_rate, 2), "x",
                     f"chosen {chosen} (cosine {figures[chosen]['cosine_min']}), query runtime {record['query']}; "
                     f"{note}", {"op": ">=", "value": 2.5}))
    rows.append(_row("seconds", "calibration time (models exported beforehand)", round(seconds, 1), "s", note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=calibration.PASSES, help="alternating throughput passes")
    parser.add_argument("--chunks", type=int, default=None, help="only the first N chunks of the set")
    args = parser.parse_args()
    record, seconds = measure(args.passes, args.chunks)
    settings = load_settings(os.environ)
    figures = record["candidates"]
    torch_rate = figures[calibration.REFERENCE]["chunks_per_s"]
    print(f"{'runtime':<20} {'chunks/s':>9} {'vs torch':>9} {'cosine min':>11} {'hits@5':>7} {'query p50':>10}  kept")
    for name, fig in figures.items():
        print(f"{name:<20} {fig['chunks_per_s']:>9} {fig['chunks_per_s'] / torch_rate:>8.2f}x {fig['cosine_min']:>11} "
              f"{fig['hits_at_5']:>7} {fig['query_p50_ms']:>8} ms  {'yes' if fig['kept'] else fig['refused']}")
    print(f"ingest: {record['ingest']} ({record['ingest_vs_torch']}x torch fp32), query: {record['query']}; "
          f"{record['texts']} chunks, {record['queries']} queries, {settings.worker_torch_threads} worker threads, "
          f"{settings.api_torch_threads} query thread; {record['host']['cpu']}, bf16 flags {record['host']['bf16']}; "
          f"{seconds:.0f} s, load {record['load'][0]} -> {record['load'][1]}")


if __name__ == "__main__":
    main()
