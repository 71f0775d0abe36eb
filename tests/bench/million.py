"""A million vectors through the real API, and search latency across a rebuild and swap.

A real stack (redis-server, two celery workers, one gunicorn API process) on the clustered benchmark
embedder (SWAPLINE_EMBEDDER=clustered: 4096 Gaussian clusters on the unit sphere; a document "c12 r345"
is a point of cluster 12, a query "c12 q9" a held-out point of the same cluster):

1. ingest N one-chunk documents through POST /documents in batches; rebuild (a full build: IVF past
   the approximate threshold); the API loads it;
2. measure search in-process (`nearest` on the same version, format 2 as an API process opens it) and
   recall@10 of held-out queries against exhaustive search of the same parts (every list probed);
3. add 1% more documents, and run a search loop over HTTP (every request's time and status kept) while
   the rebuild of that change runs, publishes and the API swaps: p99 during against p99 steady, zero
   failures, the API process's memory before / during / after the swap, the API's load of the new
   version, and the second rebuild's time (and its version write's) against the first;
4. a watched source (one markdown file, the real watcher process, default watch settings) in the same
   collection: one edit of the file at a time, timed from the end of the ingest the watcher's reconcile
   ran to the API serving the version that holds it (and from the file write);
5. the disk of the kept versions (every part they reference) against the newest version's own.
N is 1,000,000 (100,000 with --quick).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import requests

from shared import keys
from shared.settings import Settings
from tests.bench.common import job_seconds, ms, pct, rebuild, row, stack, submit, wait_all, wait_served

COLLECTION = "million"
CLUSTERS = 4096
BATCH = 10_000


def _docs(start: int, stop: int) -> list[dict]:
    return [{"id": f"d{i}", "text": f"c{(i * 2654435761) % CLUSTERS} r{i}"} for i in range(start, stop)]


def _query(j: int) -> str:
    return f"c{(j * 40503) % CLUSTERS} q{j}"


def ingest(base: str, start: int, stop: int, timeout: float) -> tuple[float, list[dict]]:
    """Submit documents [start, stop) in batches and wait for every ingest job; (seconds, jobs)."""
    started = time.perf_counter()
    ids = [submit(base, COLLECTION, _docs(i, min(stop, i + BATCH)))["id"] for i in range(start, stop, BATCH)]
    jobs = wait_all(base, ids, timeout)
    return time.perf_counter() - started, jobs


class _Background:
    """Runs `run()` in a daemon thread for the length of a `with` block; `run` polls `_stop`."""

    def run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


@dataclass
class Loop(_Background):
    """Searches over HTTP, one at a time, until stopped: (start offset s, latency s, status) each."""

    base: str
    t0: float
    samples: list = field(default_factory=list)

    def run(self) -> None:
        session = requests.Session()
        j = 0
        while not self._stop.is_set():
            j += 1
            started = time.time()
            try:
                status = session.post(f"{self.base}/v1/collections/{COLLECTION}/search",
                                      json={"query": _query(10_000_000 + j), "k": 10}, timeout=30).status_code
            except requests.RequestException:
                status = 0
            self.samples.append((started - self.t0, time.time() - started, status))


@dataclass
class MemorySampler(_Background):
    """RSS of one process every 0.25 s while running, in a thread: (seconds since t0, bytes) each."""

    pid: int
    t0: float
    rss: list = field(default_factory=list)

    def run(self) -> None:
        import psutil

        proc = psutil.Process(self.pid)
        while not self._stop.wait(0.25):
            self.rss.append((time.time() - self.t0, proc.memory_info().rss))


def memory(pid: int) -> dict:
    """RSS, USS and PSS of a process in MiB (USS/PSS read /proc/pid/smaps)."""
    import psutil

    info = psutil.Process(pid).memory_full_info()
    out = {k: getattr(info, k) / 2**20 for k in ("rss", "uss", "pss") if hasattr(info, k)}
    # RssFile: pages of mapped files (the memory-mapped index); RssAnon: the process's own heap.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            out[line.split(":")[0].lower()] = int(line.split()[1]) / 1024
    return out


def _memory_note(mem: dict) -> str:
    return (f"USS {mem.get('uss', 0):.0f}, PSS {mem.get('pss', 0):.0f}, anonymous {mem.get('rssanon', 0):.0f}, "
            f"mapped files {mem.get('rssfile', 0):.0f} MiB")


def event_ms(client, kind: str, version: int) -> list[tuple[int, dict]]:
    """(ms timestamp, data) of events `kind` about `version`, from the event stream's ids."""
    import json

    out = []
    for entry_id, fields in client.xrange(keys.events()):
        if fields.get("type") != kind:
            continue
        data = json.loads(fields.get("data") or "{}")
        if data.get("version") == version:
            out.append((int(entry_id.split("-")[0]), data))
    return out


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def _stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


EDITS = 3


def edit_latency(running, base: str, folder: Path) -> list[dict]:
    """A watched source in the collection; EDITS edits of its one file, each timed from its ingest's end
    (and from the write) to the API serving the version that finds it."""
    from tests.bench.sources import reconcile_until_served
    from tests.support import start_watcher, wait_for

    target = folder / "notes.md"
    target.write_text("# Notes\nA watched file in the million collection.\n")
    log_dir = running.workdir / "watcher-logs"
    log_dir.mkdir(exist_ok=True)
    watcher = start_watcher(running.settings, log_dir)
    try:
        _, _, _, source_id = reconcile_until_served(base, COLLECTION, None, str(folder), watch=True)
        wait_for(lambda: requests.get(f"{base}/v1/collections/{COLLECTION}/sources", timeout=30).json()["sources"][0][
            "watched_by"], timeout=60, message="the watcher to follow the source")
        time.sleep(3)  # the watcher's own catch-up reconcile (which finds nothing) passes
        out = []
        for attempt in range(EDITS):
            word = f"quokkaedit{attempt}x"
            written = time.time()
            with open(target, "a") as fh:
                fh.write(f"\n## Edit {attempt}\nThe {word} section.\n")

            def served(w=word) -> int | None:
                body = requests.post(f"{base}/v1/collections/{COLLECTION}/search",
                                     json={"query": w, "k": 1, "mode": "keyword"}, timeout=30).json()
                return body["index_version"] if body["hits"] else None

            version = wait_for(served, timeout=300, interval=0.05, message="the edit to be searchable")
            found = time.time()
            ingests = requests.get(f"{base}/v1/jobs", params={"kind": "ingest_files", "collection": COLLECTION,
                                                              "limit": 5}, timeout=30).json()["jobs"]
            ended = max(_stamp(j["finished_at"]) for j in ingests if j.get("finished_at")
                        and _stamp(j["finished_at"]) >= written)
            swapped = event_ms(running.redis, "index.swapped", version)[0][0] / 1000
            out.append({"after_ingest": swapped - ended, "from_write": found - written, "version": version})
            time.sleep(2)
        return out
    finally:
        watcher.stop()


def kept_disk(settings: Settings) -> tuple[float, float, int]:
    """(bytes of every kept version and the parts they use, bytes of the newest version alone, versions)."""
    from shared.storage import Storage
    from tests.support import version_disk_bytes

    indexes = Storage(settings.data_dir).indexes_dir(COLLECTION)
    versions = sorted((int(p.name[1:]) for p in indexes.iterdir() if p.name.startswith("v")), reverse=True)
    total = sum(f.stat().st_size for f in indexes.rglob("*") if f.is_file())
    return total, version_disk_bytes(indexes / f"v{versions[0]}"), len(versions)


def in_process(settings: Settings, version: int, queries: int) -> dict:
    """Search p50/p99 with `nearest`, and recall@10 of held-out queries against every list probed, on
    the version the API serves."""
    from shared.index.embedders import make_embedder
    from shared.index.parts import PartsVersion, open_version
    from shared.storage import Storage

    loaded = open_version(Storage(settings.data_dir).version_dir(COLLECTION, version), version)
    assert isinstance(loaded, PartsVersion)  # what every rebuild writes
    loaded.warm()
    vectors = make_embedder(settings, threads=1).embed([_query(j) for j in range(queries)])
    times = []
    for v in vectors:
        started = time.perf_counter()
        loaded.nearest(v, 10)
        times.append(time.perf_counter() - started)
    lists = [part.ivf.nlist for part in loaded.parts if part.ivf is not None]
    recall = None
    if lists:
        sample = vectors[:100]
        got = [{row for row, _ in loaded.nearest(v, 10)} for v in sample]
        loaded.nprobe = max(lists)  # every list of every part probed: the exact answer over the same rows
        truth = [{row for row, _ in loaded.nearest(v, 10)} for v in sample]
        recall = sum(len(t & g) for t, g in zip(truth, got, strict=True)) / (10 * len(sample))
    return {"p50": pct(times, .5), "p99": pct(times, .99), "recall": recall, "load": loaded.load_seconds}


def run(quick: bool) -> list[dict]:
    n = 100_000 if quick else 1_000_000
    added = n // 100
    steady_seconds = 8.0 if quick else 20.0
    folder = Path(tempfile.mkdtemp(prefix="swapline-bench-source-")) / "watched"
    folder.mkdir()
    settings = Settings(embedder="clustered", search_cache_size=0, embed_cache_bytes=0,
                        max_documents_per_batch=BATCH, approx_threshold=50_000, watcher_poll_seconds=2.0,
                        max_queued_ingest=100_000, source_roots=str(folder.parent))
    with stack(settings, workers=2) as running:
        base, client = running.base, running.redis
        requests.post(f"{base}/v1/collections", json={"name": COLLECTION}, timeout=30).raise_for_status()
        ingest_s, _ = ingest(base, 0, n, timeout=3 * 3600)
        full = rebuild(base, COLLECTION, timeout=3600)
        v1 = full["result"]["version"]
        wait_served(base, COLLECTION, v1, timeout=600)
        pid = running.api_pid()
        api_load = event_ms(client, "index.swapped", v1)[0][1].get("load_seconds")
        local = in_process(running.settings, v1, 300)

        add_s, _ = ingest(base, n, n + added, timeout=3600)
        t0 = time.time()
        mem_before = memory(pid)
        with MemorySampler(pid, t0) as sampler, Loop(base, t0) as loop:
            time.sleep(steady_seconds)  # the steady phase of the loop
            rebuild_at = time.time() - t0
            second = rebuild(base, COLLECTION, timeout=3600)
            v2 = second["result"]["version"]
            wait_served(base, COLLECTION, v2, timeout=600)
            served_at = time.time() - t0
            time.sleep(min(5.0, steady_seconds / 2))  # the loop runs on after the swap
        mem_after = memory(pid)
        published = event_ms(client, "index.published", v2)[0][0] / 1000 - t0
        swapped = event_ms(client, "index.swapped", v2)[0][0] / 1000 - t0
        api_load_v2 = event_ms(client, "index.swapped", v2)[0][1].get("load_seconds")
        edits = edit_latency(running, base, folder)
        disk_total, disk_one, kept = kept_disk(running.settings)
    shutil.rmtree(folder.parent, ignore_errors=True)

    samples = loop.samples
    steady = [lat for t, lat, _ in samples if t < rebuild_at]
    during = [lat for t, lat, _ in samples if rebuild_at <= t <= swapped]
    failed = sum(1 for _, _, status in samples if status != 200)
    # Searches fault the mapped index in as they go, so RSS grows through the steady phase too: the swap's
    # cost is the peak from the rebuild's start on against the peak of the steady phase before it.
    rss_steady = max((r for t, r in sampler.rss if t < rebuild_at), default=0) / 2**20
    rss_during = max((r for t, r in sampler.rss if t >= rebuild_at), default=0) / 2**20
    full_s, second_s = job_seconds(full), job_seconds(second)
    res = full["result"]
    size = f"{n:,} x 384 clustered" if not quick else f"{n:,} x 384 clustered (quick)"
    extra = {k: v for k, v in second["result"].items() if k not in ("timings", "version")}
    write_full, write_second = (job["result"]["timings"]["write"] + job["result"]["timings"]["verify"]
                                for job in (full, second))
    after_ingest = [e["after_ingest"] for e in edits]
    rows = [
        row("million.ingest_seconds", f"ingest {n:,} documents over HTTP (2 workers)", ingest_s, "s",
            note=f"{n // BATCH} batches of {BATCH}, clustered embedder; {n / ingest_s:,.0f} docs/s"),
        row("million.build_seconds", "full rebuild job (merge, IVF train+add, recall, write, verify)", full_s, "s",
            note=f"timings {res.get('timings')}"),
        row("million.api_load_seconds", "load + warm in the API process, first version", api_load, "s",
            note=f"{size}; a process hashes each part in full the first time it opens it"),
        row("million.recall_at_10", "recall@10 measured at build (manifest)", res.get("recall_at_10"), "fraction",
            (">=", 0.95), note=f"nprobe {res.get('nprobe')}, nlist {res.get('nlist')}, kind {res.get('kind')}"),
        row("million.heldout_recall_at_10", "recall@10, held-out queries vs every list probed", local["recall"],
            "fraction", (">=", 0.95), note="100 held-out queries from the same clusters"),
        row("million.inprocess_p50", "search in-process p50 (nearest)", ms(local["p50"]), "ms",
            note=size),
        row("million.inprocess_p99", "search in-process p99 (nearest)", ms(local["p99"]), "ms",
            note=size),
        row("million.http_p50", "search over HTTP p50 (steady)", ms(pct(steady, .5)), "ms",
            note=f"{len(steady)} searches, distinct held-out queries, cache off"),
        row("million.http_p99", "search over HTTP p99 (steady)", ms(pct(steady, .99)), "ms",
            note=f"{len(steady)} searches"),
        row("million.http_p99_during", "search over HTTP p99 during rebuild + swap", ms(pct(during, .99)) if during
            else None, "ms", note=f"{len(during)} searches from rebuild start to swap"),
        row("million.p99_during_over_steady", "search p99, during rebuild + swap / steady",
            pct(during, .99) / pct(steady, .99) if during else None, "x", ("<=", 1.2),
            note=f"{len(steady)} steady, {len(during)} during"),
        row("million.http_max_during", "search over HTTP, slowest during rebuild + swap", ms(max(during)) if during
            else None, "ms", ("<=", 100), note=f"{sum(1 for x in during if x > 0.1)} of {len(during)} over 100 ms; "
            f"publish -> swap {swapped - published:.2f} s (the API loads and warms the new version)"),
        row("million.api_load_new_version_seconds", "API load + warm of the new version (+1%)", api_load_v2, "s",
            ("<=", 1.0), note="the parts it shares with the served version are already open"),
        row("million.failed_searches", "failed searches across the rebuild and swap", failed, "count", ("<=", 0),
            note=f"{len(samples)} searches in all"),
        row("million.rss_before", "API process RSS before the swap", mem_before["rss"], "MiB",
            note=_memory_note(mem_before)),
        row("million.rss_during", "API process RSS peak during rebuild + swap", rss_during, "MiB",
            note="sampled every 0.25 s"),
        row("million.rss_after", "API process RSS after the swap", mem_after["rss"], "MiB",
            note=_memory_note(mem_after)),
        row("million.anon_rss_serving", f"API process anonymous RSS serving {n:,}", mem_before.get("rssanon"), "MiB",
            ("<=", 300) if not quick else None, note="its own memory; mapped index and table pages apart"),
        row("million.rss_peak_over_steady", "API RSS peak during rebuild + swap / steady peak before it",
            rss_during / rss_steady if rss_steady else None, "x", ("<=", 1.3),
            note=f"{rss_during:,.0f} against {rss_steady:,.0f} MiB, sampled every 0.25 s"),
        row("million.add_one_percent_seconds", f"ingest {added:,} more documents (1%)", add_s, "s"),
        row("million.rebuild_after_one_percent_seconds", "rebuild after adding 1%", second_s, "s",
            note=f"timings {second['result'].get('timings')}; {extra}"),
        row("million.incremental_over_full", "rebuild after +1% / full build", second_s / full_s, "x", ("<=", 0.10),
            note="job wall times (started_at -> finished_at)"),
        row("million.version_write_over_full", "version write + verify after +1% / full", write_second / write_full,
            "x", ("<=", 0.10), note=f"{write_second:.2f} s against {write_full:.2f} s (job timings)"),
        row("million.kept_disk_over_one", f"disk of the {kept} kept versions / the newest one", disk_total / disk_one,
            "x", ("<=", 1.5), note=f"{disk_total / 2**20:,.0f} MiB against {disk_one / 2**20:,.0f} MiB: parts shared"),
        row("million.edit_searchable_seconds", "one watched document edited -> searchable, after its ingest",
            max(after_ingest), "s", ("<=", 5.0), note=f"slowest of {EDITS} edits ({_seconds(after_ingest)} s); "
            f"from the file write: {_seconds([e['from_write'] for e in edits])} s; watcher, debounce and rebuild "
            "at default settings"),
    ]
    compact = [(round(t, 3), round(lat, 5), status) for t, lat, status in samples]
    series = next(r for r in rows if r["name"] == "million.incremental_over_full")
    series["series"] = {"samples": compact, "rebuild_start": rebuild_at, "published": published,
                          "swapped": swapped, "served": served_at, "vectors": n}
    return rows
