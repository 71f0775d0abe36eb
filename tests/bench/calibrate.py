"""Embedder calibration on this host, as a worker's first start runs it, printed as a table:

    .venv/bin/python -m tests.bench.calibrate [--passes N] [--chunks N]

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
from shared.index.onnxembed import exported_model
from shared.settings import load_settings
from tests.bench.embed import MODELS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=calibration.PASSES, help="alternating throughput passes")
    parser.add_argument("--chunks", type=int, default=None, help="only the first N chunks of the set")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for variant in ("fp32", "int8"):
        exported_model(MODELS_DIR, variant)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(os.environ).with_(data_dir=Path(tmp))
        shutil.copytree(MODELS_DIR, Path(tmp) / "models")
        started = time.monotonic()
        record = calibration.calibrate(settings, calibration.load_set(chunks=args.chunks), passes=args.passes)
    figures = record["candidates"]
    torch_rate = figures[calibration.REFERENCE]["chunks_per_s"]
    print(f"{'runtime':<20} {'chunks/s':>9} {'vs torch':>9} {'cosine min':>11} {'hits@5':>7} {'query p50':>10}  kept")
    for name, fig in figures.items():
        print(f"{name:<20} {fig['chunks_per_s']:>9} {fig['chunks_per_s'] / torch_rate:>8.2f}x {fig['cosine_min']:>11} "
              f"{fig['hits_at_5']:>7} {fig['query_p50_ms']:>8} ms  {'yes' if fig['kept'] else fig['refused']}")
    print(f"ingest: {record['ingest']} ({record['ingest_vs_torch']}x torch fp32), query: {record['query']}; "
          f"{record['texts']} chunks, {record['queries']} queries, {settings.worker_torch_threads} worker threads, "
          f"{settings.api_torch_threads} query thread; {record['host']['cpu']}, bf16 flags {record['host']['bf16']}; "
          f"{time.monotonic() - started:.0f} s, load {record['load'][0]} -> {record['load'][1]}")


if __name__ == "__main__":
    main()
