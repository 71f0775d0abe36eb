"""Where a search over HTTP spends its time: py-spy samples the gunicorn worker (1 worker, 1 request
thread) while one client searches distinct queries in vector mode with the real model, then prints the
functions with the most samples, on their own (self) and with what they call (total).

    python -m tests.bench.profile_search [--seconds 15] [--files 4] [--py-spy PATH] [--embedder hash]

py-spy is not a dependency of the project: install it where you like (`pip install py-spy`, a PyPI
wheel) and name it with --py-spy, or have it on PATH. Sampling needs ptrace rights over the worker
(root, or kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from shared.settings import Settings
from tests.bench.common import corpus_documents, rebuild, stack, submit, wait_all, wait_served
from tests.bench.concurrency import queries

COLLECTION = "profile"


def top_frames(raw: str, n: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """From py-spy's raw (collapsed) output: the `n` frames with most samples on their own and in
    total (each frame counted once per stack), and the samples in all."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack_text.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return own.most_common(n), total.most_common(n), samples


def _search_loop(base: str, stop: threading.Event, done: list[float]) -> None:
    session = requests.Session()
    for q in queries(1_000_000):
        if stop.is_set():
            return
        started = time.perf_counter()
        resp = session.post(f"{base}/v1/collections/{COLLECTION}/search", json={"query": q, "k": 10, "mode": "vector"},
                            timeout=60)
        resp.raise_for_status()
        done.append(time.perf_counter() - started)


def profile(files: int, seconds: float, py_spy: str, top: int, embedder: str = "minilm") -> str:
    settings = Settings(embedder=embedder, search_cache_size=0)
    with stack(settings, apis=1, api_threads=1) as running:
        base = running.base
        requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, timeout=30).raise_for_status()
        wait_all(base, [submit(base, COLLECTION, corpus_documents(files))["id"]], timeout=900)
        version = rebuild(base, COLLECTION, timeout=300)["result"]["version"]
        wait_served(base, COLLECTION, version)
        stop, done = threading.Event(), []
        client = threading.Thread(target=_search_loop, args=(base, stop, done))
        client.start()
        time.sleep(2.0)  # warm: model, connections, first faults
        done.clear()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "raw.txt"
            subprocess.run([py_spy, "record", "--pid", str(running.api_pid()), "--duration", f"{seconds:.0f}",
                            "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"],
                           check=True, capture_output=True, timeout=seconds + 60)
            raw = out.read_text()
        stop.set()
        client.join()
    own, total, samples = top_frames(raw, top)
    done.sort()
    lines = [f"{len(done)} searches, p50 {1000 * done[len(done) // 2]:.2f} ms; {samples} samples of the worker",
             "self:"] + [f"  {100 * c / samples:5.1f}%  {f}" for f, c in own] + \
            ["total:"] + [f"  {100 * c / samples:5.1f}%  {f}" for f, c in total]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile_search", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--embedder", default="minilm",
                        help="the API's query embedder: `hash` leaves the model out, so the rest shows")
    args = parser.parse_args()
    print(profile(args.files, args.seconds, args.py_spy, args.top, args.embedder))


if __name__ == "__main__":
    main()
