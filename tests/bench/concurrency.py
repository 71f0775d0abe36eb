"""Searches per second and p99 at 1, 4 and 16 concurrent clients over HTTP, against the same searches
run in this process on the same cores, with the real model.

A real stack (redis-server, one celery worker) indexes KEP files of the sample corpus; then each gunicorn
shape in SHAPES (worker processes x request threads) serves it in turn. `wrk` (a real load generator,
C, keep-alive connections) POSTs distinct vector-mode queries (`wrk_search.lua` reads them from a file,
each wrk thread from its own offset; the result cache is off, so none is answered from it) for
`seconds` at 1, 4 and 16 connections. In this process, the same queries are embedded (one torch thread
per search, as in the API) and searched with FAISS (`nearest`) by 1, 4 and 16 threads for as long. The
levels are interleaved: in-process, then each shape over HTTP, at one level before the next, so load
from the other engineers' work falls on both sides alike.

Target: throughput at 16 clients over HTTP (the best shape) / in-process throughput at 16 threads >= 0.8.

`wrk` is a system package (Debian: `apt-get install -y wrk`); without it the module reports a skipped
row and says so. `python -m tests.bench.concurrency [--seconds S] [--files N] [--shapes 1x8,2x4]` runs
it alone and prints the rows.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from shared.settings import Settings
from tests.bench.common import (
    api_query_embedder,
    corpus_documents,
    ms,
    pct,
    rebuild,
    row,
    stack,
    submit,
    wait_all,
    wait_served,
)

COLLECTION = "concurrency"
LEVELS = (1, 4, 16)
# gunicorn shapes measured: (worker processes, request threads per worker); 2 x 8 is the default
# (webapp/api/gunicorn_conf.py).
SHAPES = ((1, 8), (2, 4), (2, 8))
LUA = Path(__file__).with_name("wrk_search.lua")
WRK_INSTALL = "wrk is not installed (Debian/Ubuntu: apt-get install -y wrk); the concurrency benchmark needs it"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def queries(n: int) -> list[str]:
    """Distinct question-like queries from KEP vocabulary (plain words: safe inside a JSON string)."""
    topics = ["pod scheduling", "volume snapshots", "node shutdown", "api priority", "dual-stack networking",
              "kubelet credential providers", "cron jobs", "topology aware routing", "sidecar containers",
              "storage capacity tracking", "graceful termination", "resource quotas", "seccomp profiles",
              "indexed jobs", "service internal traffic", "csi migration", "memory manager", "cpu manager"]
    verbs = ["how does", "why is", "when should I use", "what changed in", "limits of", "who owns"]
    return [f"{verbs[i % len(verbs)]} {topics[(i // len(verbs)) % len(topics)]} {i}" for i in range(n)]


def parse_wrk(output: str) -> dict:
    """Requests per second, p50 and p99 latency (seconds) and failed requests from `wrk --latency` output."""
    def seconds(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(number) * _UNITS[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{output[-2000:]}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {"rps": float(rps.group(1)), "p50": seconds(p50.group(1)), "p99": seconds(p99.group(1)),
            "failed": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)}


def http_level(base: str, query_file: Path, clients: int, seconds: float) -> dict:
    url = f"{base}/v1/collections/{COLLECTION}/search"
    out = subprocess.run(["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds:.0f}s",
                          "--timeout", "10s", "--latency", "-s", str(LUA), url, "--", str(query_file)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(out.stdout)


def inprocess_level(search, texts: list[str], threads: int, seconds: float) -> dict:
    """`threads` threads searching distinct queries for `seconds`: searches per second, p50 and p99."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.perf_counter() + seconds
    share = len(texts) // threads

    def loop(i: int) -> None:
        mine = texts[i * share:(i + 1) * share]
        n = 0
        while (now := time.perf_counter()) < deadline:
            search(mine[n % len(mine)])
            latencies[i].append(time.perf_counter() - now)
            n += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    spent = time.perf_counter() - started
    every = [x for per in latencies for x in per]
    return {"rps": len(every) / spent, "p50": pct(every, .5), "p99": pct(every, .99), "failed": 0}


def _inprocess_search(settings: Settings, version: int, embedder):
    from shared.index.parts import open_version
    from shared.storage import Storage

    loaded = open_version(Storage(settings.data_dir).version_dir(COLLECTION, version), version)
    loaded.warm()
    embedder.embed(["warm"])

    def search(text: str) -> None:
        loaded.nearest(embedder.embed([text])[0], 10)

    return search


def measure(files: int, seconds: float, shapes=SHAPES, levels=LEVELS, rounds: int = 1) -> tuple[dict, str]:
    """{(side, clients): figures} for side "inprocess" and each "http WxT" shape, and a note; with
    several rounds (each level of each side measured once a round, interleaved), the median of each
    figure."""
    from tests.support import start_api

    settings = Settings(embedder="minilm", search_cache_size=0)
    with stack(settings, apis=1) as running:
        base = running.base
        requests_post(f"{base}/v1/collections", {"name": COLLECTION})
        wait_all(base, [submit(base, COLLECTION, corpus_documents(files))["id"]], timeout=900)
        job = rebuild(base, COLLECTION, timeout=300)
        version, vectors = job["result"]["version"], job["result"]["vectors"]
        # The API's query runtime (calibrated on this host), in this process too; the shapes' APIs below
        # start with the record in place and embed with it from their first search.
        embedder = api_query_embedder(base, running.settings)
        search = _inprocess_search(running.settings, version, embedder)
        running.apis.pop()[0].stop()  # each shape gets its own API below
        texts = queries(200_000)
        query_file = running.workdir / "queries.txt"
        query_file.write_text("\n".join(json.dumps({"query": t, "k": 10, "mode": "vector"}) for t in texts) + "\n")
        apis = {}
        for workers, threads in shapes:
            name = f"http {workers}x{threads}"
            proc, api_base = start_api(running.settings, running.workdir, name=f"api-{workers}x{threads}",
                                       threads=threads, workers=workers)
            running.apis.append((proc, api_base))
            wait_served(api_base, COLLECTION, version)
            for _ in range(4 * workers * threads):  # every worker's model and index warm
                requests_post(f"{api_base}/v1/collections/{COLLECTION}/search",
                              {"query": "warm up the workers", "k": 10, "mode": "vector"})
            apis[name] = api_base
        runs: dict = {}
        for _ in range(rounds):
            for clients in levels:
                runs.setdefault(("inprocess", clients), []).append(inprocess_level(search, texts, clients, seconds))
                for name, api_base in apis.items():
                    runs.setdefault((name, clients), []).append(http_level(api_base, query_file, clients, seconds))
        results = {key: {k: statistics.median(r[k] for r in got) for k in got[0]} for key, got in runs.items()}
    note = (f"{vectors} chunks of {files} KEP files, all-MiniLM-L6-v2 ({settings.embedder}: queries on "
            f"{embedder.model_id.rsplit('/', 1)[-1]}), vector mode, k=10, "
            f"distinct queries, result cache off, {seconds:.0f} s a point, median of {rounds} interleaved "
            f"round(s), wrk over loopback")
    return results, note


def requests_post(url: str, body: dict) -> None:
    import requests

    resp = requests.post(url, json=body, timeout=120)
    if resp.status_code >= 400:
        raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:300]}")


def rows_of(results: dict, note: str) -> list[dict]:
    out = []
    sides = sorted({side for side, _ in results})
    for side in sides:
        key = side.replace(" ", "_")
        for clients in sorted({c for _, c in results}):
            got = results.get((side, clients))
            if got is None:
                continue
            extra = f"; {got['failed']} failed" if got["failed"] else ""
            out.append(row(f"concurrency.{key}_rps_{clients}", f"searches/s, {side}, {clients} concurrent",
                           got["rps"], "1/s", note=note + extra))
            out.append(row(f"concurrency.{key}_p99_{clients}", f"search p99, {side}, {clients} concurrent",
                           ms(got["p99"]), "ms", note=note + extra))
    top = max(c for _, c in results)
    http = {side: results[(side, top)]["rps"] for side in sides if side != "inprocess" and (side, top) in results}
    if http and ("inprocess", top) in results:
        best = max(http, key=http.__getitem__)
        out.append(row(f"concurrency.http_over_inprocess_rps_{top}",
                       f"throughput at {top} clients, HTTP ({best}) / in-process ({top} threads)",
                       http[best] / results[("inprocess", top)]["rps"], "x", (">=", 0.8), note=note))
    return out


def run(quick: bool) -> list[dict]:
    if shutil.which("wrk") is None:
        return [{"name": "concurrency.skipped", "label": "concurrency: skipped", "value": None, "unit": "",
                 "target": None, "note": WRK_INSTALL, "error": "skipped"}]
    files, seconds = (12, 10.0) if quick else (40, 15.0)
    return rows_of(*measure(files, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.concurrency", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each point")
    parser.add_argument("--files", type=int, default=12, help="KEP files to index")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (the median is reported)")
    parser.add_argument("--shapes", default=",".join(f"{w}x{t}" for w, t in SHAPES),
                        help="gunicorn shapes WORKERSxTHREADS, comma-separated")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_INSTALL)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    levels = [int(x) for x in args.levels.split(",")]
    results, note = measure(args.files, args.seconds, shapes, levels, args.rounds)
    for r in rows_of(results, note):
        print(f"{r['label']:<70} {r['value']:>10} {r['unit']}")
    print(note)


if __name__ == "__main__":
    main()
