"""Ten million chunks on this machine, end to end, on realistic vectors: every step timed.

A real stack (redis-server, two celery workers, one gunicorn API process) on the realistic benchmark
embedder (SWAPLINE_EMBEDDER=realistic, shared/index/realistic.py: "doc-<i>" embeds to row i of vectors
fitted to real all-MiniLM-L6-v2 neighbour distances, "q<k>:<n>" to held-out query k over the first n):

1. ingest N one-chunk documents through POST /documents, in batches, a bounded number of jobs queued
   (the API's 503 back-pressure waited out), and wait for every ingest job;
2. one full rebuild (compressed past the threshold, PQ4 by default: trained on a sample, rows added in
   streamed slices, nprobe and re-rank depth tuned at build time), while the peak RSS of every worker
   process is sampled;
3. the API process loads and warms it (its own load time, from its swap event), then searches over
   HTTP one at a time with held-out queries (one keep-alive http.client connection), each timed at the
   client; the queries' vectors are written ahead into the data dir's query table, so the API's embedder
   reads them (making one costs tens of ms of CPU); the API process's memory (anonymous, mapped files)
   after them;
4. recall@10 of those answers against the exact top 10 over rows [0, N) made afresh by the same
   generator (not read back from our files), with the queries' vectors made by the same generator;
5. the real query model: p50 of embedding a query in-process at one thread with the runtime an API
   process would use, measured in this run, so that the HTTP p50 the real model would give can be
   stated (realistic embedding + the difference), and said to be an estimate.

N is 10,000,000 (`--rows` sets it; 100,000 with --quick). Run alone with
`.venv/bin/python -m tests.bench --only tenmillion` (about an hour at 10M on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import deque
from dataclasses import dataclass

import faiss
import numpy as np
import requests

from shared.index.realistic import QUERY_TABLE, write_query_table
from shared.index.vectorindex import INDEX_FILE, KIND_IVF_PQ
from shared.settings import Settings
from shared.storage import Storage
from tests.bench.common import StdlibClient, job_seconds, ms, pct, rebuild, row, server_timing, stack, wait_served
from tests.bench.million import _Background, event_ms, memory

log = logging.getLogger("bench")

COLLECTION = "tenmillion"
BATCH = 10_000
IN_FLIGHT = 16  # ingest jobs submitted and not yet finished, at most
QUERIES = 300  # HTTP searches timed (the first 200 also scored for recall)
RECALL_QUERIES = 200


def _docs(start: int, stop: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"doc-{i}"} for i in range(start, stop)]


def _query(k: int, n: int) -> str:
    return f"q{k}:{n}"


def ingest(base: str, n: int, timeout: float) -> tuple[float, int]:
    """Submit documents [0, n) in batches, at most IN_FLIGHT jobs unfinished; (seconds, jobs)."""
    from tests.bench.common import submit
    from tests.support import wait_job

    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    pending: deque[str] = deque()
    jobs = 0

    def finish_one() -> None:
        job = wait_job(base, pending.popleft(), max(1.0, deadline - time.monotonic()))
        if job["state"] != "succeeded":
            raise RuntimeError(f"ingest job did not succeed: {job}")

    for start in range(0, n, BATCH):
        if len(pending) >= IN_FLIGHT:
            finish_one()
        pending.append(submit(base, COLLECTION, _docs(start, min(n, start + BATCH)))["id"])
        jobs += 1
    while pending:
        finish_one()
    return time.perf_counter() - started, jobs


@dataclass
class TreePeak(_Background):
    """The largest RSS (and anonymous RSS) of any process in the trees under `pids`, sampled every 0.5 s
    in a thread for the length of a `with` block."""

    pids: list[int]
    peak: int = 0
    peak_anon: int = 0

    def run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def _sample(self) -> None:
        import psutil

        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    self.peak = max(self.peak, proc.memory_info().rss)
                    with open(f"/proc/{proc.pid}/status") as fh:
                        for line in fh:
                            if line.startswith("RssAnon:"):
                                self.peak_anon = max(self.peak_anon, int(line.split()[1]) * 1024)
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    continue


def exact_truth(n: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The held-out queries' vectors and their exact top 10 over rows [0, n) of the generator."""
    from shared.index.compressed import exact_top
    from shared.index.realistic import QUERY_COSINES, RealisticVectors

    source = RealisticVectors()
    queries, _ = source.queries(keys, n, QUERY_COSINES)
    _, ids = exact_top(lambda size: (rows for _, rows in source.slices(0, n, size)), queries, 10)
    return queries, ids


SWEEP = (16, 64, 256, 1024, 2048)


def doc_numbers(loaded) -> np.ndarray:
    """For each row of a loaded version, the number i of its document "doc-<i>" (the generator's row)."""
    import pyarrow.compute as pc

    out = []
    for part in loaded.parts:
        ids = part.tables.ids
        numbers = pc.cast(pc.utf8_slice_codeunits(ids, 4), "int64").to_numpy()
        out.append(numbers[part.tables.row_doc])
    return np.concatenate(out)


def sweep(settings: Settings, version: int, queries: np.ndarray, truth: np.ndarray, tuned: int) -> list[dict]:
    """Recall@10 and nearest() p50/p99 in-process on the served version at nprobe `tuned` and SWEEP
    (the re-rank depth as built): the recall / latency frontier on held-out queries."""
    from shared.index.parts import PartsVersion, open_version
    from shared.storage import Storage
    from webapp.api.runtime import FAISS_THREADS

    faiss.omp_set_num_threads(FAISS_THREADS)  # as an API process searches
    loaded = open_version(Storage(settings.data_dir).version_dir(COLLECTION, version), version)
    assert isinstance(loaded, PartsVersion)  # what every rebuild writes
    loaded.warm()
    numbers = doc_numbers(loaded)
    out = []
    for nprobe in sorted({tuned, *SWEEP}):
        loaded.nprobe = nprobe
        times, got = [], []
        for q in queries:
            started = time.perf_counter()
            found = loaded.nearest(q, 10)
            times.append(time.perf_counter() - started)
            got.append({int(numbers[r]) for r, _ in found})
        recall = sum(len(g & set(t.tolist())) for g, t in zip(got, truth, strict=True)) / (10 * len(queries))
        out.append({"nprobe": nprobe, "recall": round(recall, 4), "p50_ms": round(ms(pct(times, .5)), 2),
                    "p99_ms": round(ms(pct(times, .99)), 2)})
    return out


WARM = 100  # searches (other held-out queries) run first, untimed: the compaction's writes evict the index
WARM_KEYS = 1_000_000  # the untimed searches' query keys start here


def search_http(base: str, n: int, count: int
                ) -> tuple[list[float], list[list[str]], int, list[float], list[float], list[float]]:
    """`count` searches over HTTP (one keep-alive http.client connection), one at a time, after WARM
    untimed ones: (seconds each, hit ids each, failures; for each answered one, its seconds but the API's
    own embedding of the query, that embedding's seconds and the API's search (index, hits, answer)
    seconds, from its Server-Timing header)."""
    client = StdlibClient(base)
    path = f"/v1/collections/{COLLECTION}/search"
    for k in range(WARM):
        client.post(path, {"query": _query(WARM_KEYS + k, n), "k": 10, "mode": "vector"})
    times, hits, failed, besides, embeds, searches = [], [], 0, [], [], []
    for k in range(count):
        started = time.perf_counter()
        resp = client.post(path, {"query": _query(k, n), "k": 10, "mode": "vector"})
        times.append(time.perf_counter() - started)
        if resp.status_code != 200:
            failed += 1
            hits.append([])
            continue
        hits.append([h["doc_id"] for h in resp.json()["hits"]])
        timing = server_timing(resp)
        embeds.append(timing["embed"])
        searches.append(timing["search"])
        besides.append(times[-1] - embeds[-1])
    client.close()
    return times, hits, failed, besides, embeds, searches


def real_query_embed(settings: Settings, count: int = 200) -> tuple[float, str]:
    """p50 of one query embedded in-process at one thread by the runtime an API process on this host
    would use with SWAPLINE_EMBEDDER=minilm (the default): the query runtime of the host's calibration,
    which runs here first when the data dir holds no record, as a worker's first start would; on
    distinct short queries; (s, model id)."""
    from dataclasses import replace

    from shared.index.calibration import ensure_record
    from shared.index.embedders import make_runtime
    from tests.bench.latency import _queries

    record = ensure_record(replace(settings, embedder="minilm"))
    embedder = make_runtime(record["query"], settings, threads=settings.api_torch_threads)
    queries = _queries(count)
    embedder.embed(queries[:4])
    times = []
    for q in queries:
        started = time.perf_counter()
        embedder.embed([q])
        times.append(time.perf_counter() - started)
    return pct(times, .5), embedder.model_id


def _compaction(base: str, timeout: float) -> dict | None:
    """The compaction job the build's publish asked for, once finished (None when none was asked for)."""
    from tests.support import wait_job

    jobs = requests.get(f"{base}/v1/jobs", params={"kind": "compact", "collection": COLLECTION, "limit": 5},
                        timeout=30).json()["jobs"]
    if not jobs:
        return None
    job = wait_job(base, jobs[0]["id"], timeout)
    if job["state"] != "succeeded":
        raise RuntimeError(f"compaction did not succeed: {job}")
    return job


def run(quick: bool, n: int | None = None) -> list[dict]:
    n = n or (100_000 if quick else 10_000_000)
    settings = Settings(embedder="realistic", search_cache_size=0, embed_cache_bytes=0,
                        max_documents_per_batch=BATCH)
    keys = np.arange(RECALL_QUERIES, dtype=np.int64)
    with stack(settings, workers=2) as running:
        base = running.base
        requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, timeout=30).raise_for_status()
        ingest_s, jobs = ingest(base, n, timeout=6 * 3600)
        log.info("tenmillion ingest rows=%d seconds=%.1f jobs=%d", n, ingest_s, jobs)
        disk_segments = sum(f.stat().st_size for f in (running.settings.data_dir).rglob("*") if f.is_file())
        pids = [w.popen.pid for w in running.workers]
        with TreePeak(pids) as peak:
            full = rebuild(base, COLLECTION, timeout=6 * 3600)
        version = full["result"]["version"]
        log.info("tenmillion build seconds=%.1f peak_rss_mib=%.0f result=%s", job_seconds(full), peak.peak / 2**20,
                 {k: v for k, v in full["result"].items() if k not in ("ladder", "ivf_training")})
        served_at = time.perf_counter()
        wait_served(base, COLLECTION, version, timeout=3600)
        wait_s = time.perf_counter() - served_at
        swapped = event_ms(running.redis, "index.swapped", version)
        api_load = swapped[0][1].get("load_seconds") if swapped else None
        # A publish past compact_min_segments asks for a compaction of the segments: timed, and waited
        # out before the searches, which it would otherwise share the cores with.
        with TreePeak(pids) as compact_peak:
            compaction = _compaction(base, timeout=6 * 3600)
        log.info("tenmillion compaction seconds=%s peak_rss_mib=%.0f", compaction and job_seconds(compaction),
                 compact_peak.peak / 2**20)
        pid = running.api_pid()
        # The queries' vectors made ahead, so the API's embedder reads them instead of spending tens of ms
        # of CPU on each in the process that then searches.
        write_query_table(running.settings.data_dir / QUERY_TABLE,
                          np.concatenate([np.arange(QUERIES), WARM_KEYS + np.arange(WARM)]), n)
        times, hits, failed, besides, embeds, searches = search_http(base, n, QUERIES)
        mem = memory(pid)
        log.info("tenmillion http p50_ms=%.2f p99_ms=%.2f failed=%d memory=%s", ms(pct(times, .5)),
                 ms(pct(times, .99)), failed, mem)
        disk_all = sum(f.stat().st_size for f in (running.settings.data_dir).rglob("*") if f.is_file())
        index_bytes = sum(f.stat().st_size for f in Storage(running.settings.data_dir).indexes_dir(COLLECTION)
                          .rglob(INDEX_FILE))
        embed_p50, embed_model = real_query_embed(running.settings)
        query_vectors, truth = exact_truth(n, keys)
        frontier = sweep(running.settings, version, query_vectors, truth, int(full["result"].get("nprobe") or 1))
        log.info("tenmillion frontier %s", frontier)
    got = [{int(h.removeprefix("doc-")) for h in ids} for ids in hits[:RECALL_QUERIES]]
    recall = sum(len(g & set(t.tolist())) for g, t in zip(got, truth, strict=True)) / (10 * RECALL_QUERIES)

    res = full["result"]
    build_s = job_seconds(full)
    p50, p99 = pct(times, .5), pct(times, .99)
    # The API's embedding of each query (a look-up in the query table) replaced by the real model's p50:
    # per request, the HTTP time less what the API's Server-Timing says embedding took.
    estimated, estimated_p99 = pct(besides, .5) + embed_p50, pct(besides, .99) + embed_p50
    what = f"{n:,} x 384 realistic (shared/index/realistic.py), 2 workers, 1 API process"
    tuned = (f"kind {res.get('kind')}, nlist {res.get('nlist')}, nprobe {res.get('nprobe')}, "
             f"re-rank {res.get('rerank')}, build-time recall {res.get('recall_at_10')}")
    anon, mapped = mem.get("rssanon", 0), mem.get("rssfile", 0)
    # FAISS maps IVF-SQ8's lists (counted as the files' size); it reads PQ4's block lists into anonymous memory.
    mapped_index = 0 if res.get("kind") == KIND_IVF_PQ else index_bytes
    index_note = (f"the index files {index_bytes / 2**20:,.0f} MiB (mapped)" if mapped_index else
                  f"nothing more: the index files ({index_bytes / 2**20:,.0f} MiB) are read into the anonymous memory")
    return [
        row("tenmillion.ingest_seconds", f"ingest {n:,} documents over HTTP", ingest_s, "s",
            note=f"{jobs} batches of {BATCH}, {IN_FLIGHT} in flight; {n / ingest_s:,.0f} docs/s; {what}"),
        row("tenmillion.build_seconds", "one full rebuild (train on a sample, streamed add, tune, write, verify)",
            build_s, "s", note=f"{tuned}; timings {res.get('timings')}"),
        row("tenmillion.worker_peak_rss", "rebuild worker peak RSS, full build", peak.peak / 2**20, "MiB",
            ("<=", 6144), note=f"largest RSS of any worker process, sampled every 0.5 s; its largest anonymous "
            f"RSS {peak.peak_anon / 2**20:,.0f} MiB"),
        row("tenmillion.compaction_seconds", "compaction the publish asked for (segments -> one, streamed)",
            job_seconds(compaction) if compaction else None, "s",
            note=f"worker peak RSS meanwhile {compact_peak.peak / 2**20:,.0f} MiB; "
            f"{compaction['result'] if compaction else 'none asked for'}"),
        row("tenmillion.api_load_seconds", "API load + warm of the version", api_load, "s",
            note=f"from its swap event; the client saw it served {wait_s:.1f} s after the build finished"),
        row("tenmillion.heldout_recall_at_10", "recall@10, held-out queries over HTTP vs exact", recall, "fraction",
            (">=", 0.95), note=f"{RECALL_QUERIES} queries q<k>:{n} (never stored rows) against the exact top 10 "
            f"of rows [0, {n:,}) made afresh; {tuned}"),
        row("tenmillion.nprobe_frontier", "in-process nearest(): recall@10 / p50 / p99 by nprobe", None, "",
            note="; ".join(f"nprobe {f['nprobe']}: recall {f['recall']}, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms"
                           for f in frontier) + f"; re-rank {res.get('rerank')}, {RECALL_QUERIES} held-out queries, "
            "1 thread of FAISS as the API runs it"),
        row("tenmillion.http_p50", "search over HTTP p50, realistic query vectors", ms(p50), "ms",
            note=f"{len(times)} distinct held-out queries, one at a time, after {WARM} untimed ones, cache off, "
            f"vector mode; {failed} failed"),
        row("tenmillion.http_p99", "search over HTTP p99, realistic query vectors", ms(p99), "ms",
            note=f"{len(times)} searches; the API's embedder read each query's vector from the query table in "
            f"{ms(pct(embeds, .5)):.3f} ms (p50, its Server-Timing)"),
        row("tenmillion.api_search_p50", "the API's own search time p50 (its Server-Timing `search`)",
            ms(pct(searches, .5)), "ms", note=f"index, hits' records and the answer's JSON, the embedding excluded; "
            f"p99 {ms(pct(searches, .99)):.2f} ms; HTTP less embedding and this: "
            f"{ms(pct([b - s for b, s in zip(besides, searches, strict=True)], .5)):.2f} ms p50"),
        row("tenmillion.http_p50_real_model_estimate", "search over HTTP p50 with the real query model (estimate)",
            ms(estimated), "ms", ("<=", 15), note=f"per search, HTTP time less the API's own embedding time (its "
            f"Server-Timing header), + {embed_model} query embed p50 ({ms(embed_p50):.2f} ms, in-process, 1 thread, "
            "the query runtime this host's calibration chose, measured in this run): arithmetic over measured "
            "parts"),
        row("tenmillion.http_p99_real_model_estimate", "search over HTTP p99 with the real query model (estimate)",
            ms(estimated_p99), "ms", ("<=", 40), note="as the p50 row: p99 of (HTTP time less the API's embedding) "
            "+ the real model's query embed p50"),
        row("tenmillion.api_memory", "API process memory serving it: anonymous + the compressed index",
            anon + mapped_index / 2**20, "MiB", ("<=", 5120),
            note=f"anonymous {anon:,.0f} MiB + {index_note}; the float rows for re-ranking stay on disk, mapped; "
            f"resident mapped pages {mapped:,.0f} MiB (index, tables, postings, float rows the re-rank read); "
            f"{_memory_note(mem)}"),
        row("tenmillion.disk", "data dir after the build (segments + the version)", disk_all / 2**30, "GiB",
            note=f"segments alone {disk_segments / 2**30:,.1f} GiB"),
    ]


def _memory_note(mem: dict) -> str:
    return f"RSS {mem.get('rss', 0):,.0f}, USS {mem.get('uss', 0):,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.tenmillion", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = run(False, args.rows)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
