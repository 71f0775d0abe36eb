"""`make bench-sources`: a whole repository as a source, end to end, on real processes.

Each run starts its own redis-server, the API (gunicorn) and N `celery worker` processes (one pool
process each) with the real model, in a fresh data dir (so no embedding is cached from an earlier run),
and follows the folder BENCH_SOURCE (default: ../shared/corpora/kubernetes-enhancements):

1. runs with 1 and with 2 worker processes (BENCH_WORKERS="1,2"): files/s and chunks/s of the first
   reconcile (POST to the reconcile's end, and to the new index being served), with the load average
   seen; during the last run's reconcile, BENCH_SEARCHERS threads (default 4, 0: none) search a small
   collection, each pausing 0.25 s between searches, and report errors and p50/p99;
2. after the last run: the unchanged second reconcile's time, the compaction the rebuild asked for
   (segments and disk use before and after), and, with the watcher, a writable copy of the folder as a
   watched source in another collection (the embedding cache makes it cost no embedding) and the time
   from editing one file to a search finding the edit.

Torch threads per worker: BENCH_TORCH_THREADS (default 1, so N workers use N cores); files per child
batch: BENCH_BATCH_FILES (default 16, the service's default); BENCH_CHURN_EDITS (default 0) edits of
the watched copy after the timed ones, to show compaction of superseded rows. Prints one line
per measurement; the full log of each process stays in BENCH_LOG_DIR (default a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

from shared.settings import Settings
from tests.support import free_port, start_api, start_watcher, start_worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT.parent / "shared" / "corpora" / "kubernetes-enhancements"
PROBE_DOCS = 20
EDIT_WORD = "zanzibarquokka"


def say(text: str) -> None:
    print(text, flush=True)


class LoadSampler(threading.Thread):
    """The 1-minute load average, sampled every few seconds while a measurement runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        self.stop.set()
        s = self.samples or [os.getloadavg()[0]]
        return f"load avg (1 min) during: min {min(s):.2f} mean {sum(s) / len(s):.2f} max {max(s):.2f}"


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis.Redis.from_url(url).ping(), timeout=20, message="redis")
    return proc, url


def wait_job(base: str, job_id: str, timeout: float = 7200) -> dict:
    def done():
        resp = requests.get(f"{base}/v1/jobs/{job_id}", timeout=30)
        return resp.json() if resp.status_code == 200 else None
    job = wait_for(done, timeout=timeout, interval=0.5, message=f"job {job_id}")
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job_id} {job['state']}: {job.get('error')}")
    return job


def served_version(base: str, name: str, version: int) -> None:
    wait_for(lambda: (requests.post(f"{base}/v1/collections/{name}/search", json={"query": "x", "k": 1},
                                    timeout=30).json()["index_version"] or 0) >= version,
             timeout=600, interval=0.2, message=f"{name} v{version} served")


def reconcile_until_served(base: str, name: str, source_id: str | None, path: str | None = None,
                           watch: bool = False) -> tuple[dict, float, float, str]:
    """POST a source (or a reconcile of it); returns (job, seconds to the job's end, seconds to the new
    index being served, source id)."""
    started = time.monotonic()
    if source_id is None:
        resp = requests.post(f"{base}/v1/collections/{name}/sources", json={"path": path, "watch": watch}, timeout=60)
        resp.raise_for_status()
        job, source_id = resp.json()["job"], resp.json()["source"]["id"]
    else:
        resp = requests.post(f"{base}/v1/collections/{name}/sources/{source_id}/reconcile", timeout=60)
        resp.raise_for_status()
        job = resp.json()
    job = wait_job(base, job["id"])
    ended = time.monotonic() - started
    rebuild = job["result"].get("rebuild_job_id")
    if rebuild:
        served_version(base, name, wait_job(base, rebuild)["result"]["version"])
    return job, ended, time.monotonic() - started, source_id


class Searcher:
    """Threads searching one collection in a loop: errors and latencies."""

    def __init__(self, base: str, name: str, threads: int = 4, pause: float = 0.25):
        self.base, self.name, self.pause = base, name, pause
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        session = requests.Session()
        queries = ["how does the scheduler pick a node", "pod priority and preemption", "graduation criteria",
                   "feature gate rollback", "kubelet memory swap"]
        i = 0
        while not self.stop.is_set():
            i += 1
            started = time.perf_counter()
            try:
                resp = session.post(f"{self.base}/v1/collections/{self.name}/search",
                                    json={"query": queries[i % len(queries)] + f" {i}", "k": 5}, timeout=60)
                if resp.status_code != 200 or not resp.json()["hits"]:
                    self.errors.append(f"{resp.status_code} {resp.text[:100]}")
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
            self.latencies.append(time.perf_counter() - started)
            self.stop.wait(self.pause)  # a steady load of clients, not a flood that starves the workers

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def summary(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
        return (f"{len(self.threads)} threads, {len(ordered)} searches, {len(self.errors)} errors, "
                f"p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {ordered[-1] * 1000:.0f} ms")


def run(workers: int, source: Path, log_dir: Path, torch_threads: int, last: bool, searchers: int,
        batch_files: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-sources-{workers}w-"))
    redis_proc, url = start_redis(tmp)
    procs = []
    writable = tmp / "copy"
    settings = Settings(redis_url=url, data_dir=tmp / "data", embedder="minilm", worker_torch_threads=torch_threads,
                        source_roots=f"{source.parent}:{writable.parent}", watch_debounce_seconds=0.2,
                        source_batch_files=batch_files)
    run_logs = log_dir / f"{workers}w"
    run_logs.mkdir(parents=True, exist_ok=True)
    try:
        base = None
        proc, base = start_api(settings, run_logs)
        procs.append(proc)
        for i in range(workers):
            procs.append(start_worker(settings, run_logs, name=f"w{i + 1}", concurrency=1))
        for name in ("k8s", "probe"):
            requests.post(f"{base}/v1/collections", json={"name": name}, timeout=30).raise_for_status()
        searcher = None
        if searchers and last:
            docs = [{"id": p.name + str(i), "text": p.read_text()[:4000]}
                    for i, p in enumerate(sorted(source.rglob("README.md"))[:PROBE_DOCS])]
            resp = requests.post(f"{base}/v1/collections/probe/documents", json={"documents": docs}, timeout=60)
            resp.raise_for_status()
            probe = resp.json()
            rebuild = wait_job(base, probe["id"])["result"]["rebuild_job_id"]
            served_version(base, "probe", wait_job(base, rebuild)["result"]["version"])
            searcher = Searcher(base, "probe", searchers)
        sampler = LoadSampler()
        sampler.start()
        say(f"== {workers} worker process(es), {torch_threads} torch thread(s) each; load avg before: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if searcher:
            searcher.__enter__()
        try:
            job, ended, searchable, source_id = reconcile_until_served(base, "k8s", None, str(source))
        finally:
            if searcher:
                searcher.__exit__()
        r = job["result"]
        chunks = r["chunks_embedded"] + r["chunks_reused"]
        say(f"first reconcile: files_seen={r['files_seen']} files_added={r['files_added']} "
            f"files_skipped={r['files_skipped']} chunks_embedded={r['chunks_embedded']} batches={r['batches']}")
        say(f"  reconcile {ended:.1f} s: {r['files_added'] / ended:.2f} files/s, {chunks / ended:.2f} chunks/s; "
            f"searchable after {searchable:.1f} s")
        say(f"  {sampler.summary()}")
        if searcher:
            say(f"  searches during the reconcile: {searcher.summary()}")
        if not last:
            return
        job2, ended2, _, _ = reconcile_until_served(base, "k8s", source_id)
        say(f"unchanged second reconcile: {ended2:.2f} s (files_unchanged={job2['result']['files_unchanged']}, "
            f"chunks_embedded={job2['result']['chunks_embedded']}, rebuild={'rebuild_job_id' in job2['result']})")
        compactions = requests.get(f"{base}/v1/jobs", params={"kind": "compact", "collection": "k8s"},
                                   timeout=30).json()["jobs"]
        if compactions:
            c = wait_job(base, compactions[-1]["id"])["result"]
            say(f"compaction: segments {c['segments_before']} -> {c['segments_after']}, disk "
                f"{c['bytes_before'] / 1e6:.1f} MB -> {c['bytes_after'] / 1e6:.1f} MB, rows "
                f"{c.get('rows_before')} -> {c.get('rows_after')}")
        else:
            say("compaction: none requested (fewer segments than SWAPLINE_COMPACT_MIN_SEGMENTS)")
        # A watched, writable copy in another collection: the embedding cache serves every chunk.
        shutil.copytree(source, writable, symlinks=True)
        for path in writable.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(writable, 0o755)
        procs.append(start_watcher(settings, run_logs))
        requests.post(f"{base}/v1/collections", json={"name": "watched"}, timeout=30).raise_for_status()
        job3, ended3, searchable3, _ = reconcile_until_served(base, "watched", None, str(writable), watch=True)
        say(f"watched copy, first reconcile: {ended3:.1f} s (searchable {searchable3:.1f} s), "
            f"chunks_embedded={job3['result']['chunks_embedded']} chunks_reused={job3['result']['chunks_reused']}")
        target = sorted(writable.rglob("README.md"))[0]
        wait_for(lambda: requests.get(f"{base}/v1/collections/watched/sources", timeout=30).json()["sources"][0][
            "watched_by"], timeout=60, message="the watcher to follow the copy")
        time.sleep(3)  # let the watcher's own catch-up reconcile (which finds nothing) pass
        for attempt in range(3):
            word = f"{EDIT_WORD}{attempt}"
            started = time.monotonic()
            with open(target, "a") as fh:
                fh.write(f"\n\n## Appendix {word}\nThe {word} appendix mentions {word} twice.\n")

            def found(w=word):
                hits = requests.post(f"{base}/v1/collections/watched/search", json={"query": f"{w} appendix", "k": 3},
                                     timeout=30).json()["hits"]
                return any(w in h["text"] for h in hits)

            wait_for(found, timeout=300, interval=0.1, message="the edit to be searchable")
            say(f"edit to searchable (watched source, attempt {attempt + 1}): {time.monotonic() - started:.2f} s")
            time.sleep(2)
        churn(base, writable, int(os.environ.get("BENCH_CHURN_EDITS", "0")))
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def churn(base: str, folder: Path, edits: int) -> None:
    """A watched folder that changes all day: `edits` edits of a few files, each waited for until
    searchable; then the compaction they lead to, with segments and disk use before and after."""
    if edits <= 0:
        return
    files = sorted(folder.rglob("README.md"))[:4]
    seen = {j["id"] for j in requests.get(f"{base}/v1/jobs", params={"kind": "compact", "collection": "watched",
                                                                      "limit": 100}, timeout=30).json()["jobs"]}
    for i in range(edits):
        word = f"churnword{i}x"
        with open(files[i % len(files)], "a") as fh:
            fh.write(f"\n\n## Churn {word}\nChurn note {word} mentions {word}.\n")
        wait_for(lambda w=word: any(w in h["text"] for h in requests.post(
            # Many near-identical churn sections compete: look as deep as there are edits.
            f"{base}/v1/collections/watched/search", json={"query": f"churn note {w}", "k": 100}, timeout=30,
        ).json()["hits"]), timeout=300, interval=0.2, message="a churn edit to be searchable")
    jobs = [j for j in requests.get(f"{base}/v1/jobs", params={"kind": "compact", "collection": "watched",
                                                                "limit": 100}, timeout=30).json()["jobs"]
            if j["id"] not in seen]
    if not jobs:
        say(f"after {edits} edits: no compaction requested")
        return
    c = wait_job(base, jobs[-1]["id"])["result"]
    say(f"after {edits} edits of {len(files)} files, compaction: segments {c['segments_before']} -> "
        f"{c['segments_after']}, disk {c['bytes_before'] / 1e6:.1f} MB -> {c['bytes_after'] / 1e6:.1f} MB, "
        f"rows {c.get('rows_before')} -> {c.get('rows_after')}")


def main() -> None:
    # Settings come from the environment (the docstring lists them); the parser only answers --help and
    # refuses anything else, so a mistyped flag does not start an hour-long run.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    # SIGTERM ends the run like Ctrl-C, so the processes it started are stopped (they run in their own sessions).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    source = Path(os.environ.get("BENCH_SOURCE", DEFAULT_SOURCE)).resolve()
    counts = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,2").split(",")]
    torch_threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
    searchers = int(os.environ.get("BENCH_SEARCHERS", "4"))
    batch_files = int(os.environ.get("BENCH_BATCH_FILES", "16"))
    log_dir = Path(os.environ.get("BENCH_LOG_DIR") or tempfile.mkdtemp(prefix="bench-sources-logs-"))
    say(f"source {source}; logs in {log_dir}; {os.cpu_count()} cores; {batch_files} files per batch")
    for i, n in enumerate(counts):
        run(n, source, log_dir, torch_threads, last=i == len(counts) - 1, searchers=searchers,
            batch_files=batch_files)


if __name__ == "__main__":
    main()
