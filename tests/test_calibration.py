"""Embedder calibration (shared/index/calibration.py): fake runtimes on a fake clock for the decision
(accuracy filter, fastest chosen per use), the record (written once, reused, keyed by what the figures
depend on, one calibrator among several), who calibrates (a worker under "minilm"; never a forced runtime;
the API switches when a record appears), bf16 only on CPUs that have it; and one calibration of the real
runtimes on a tiny set."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import fakeredis
import numpy as np
import pytest

from shared.index import calibration, embedders
from shared.index.calibration import CalibratedIngest, CalibratedQueries, CalibrationSet
from shared.index.embedders import HashEmbedder, make_runtime, runtime_model_id
from shared.index.onnxembed import OnnxMiniLMEmbedder
from shared.settings import Settings
from tests.support import make_services, wait_for

DOCS = {
    "keps/a": ["pods preempt lower priority pods", "preemption of pods by priority"],
    "keps/b": ["volume snapshots restore a volume", "snapshot of a persistent volume"],
    "keps/c": ["metrics from the kubelet", "structured logging of the kubelet"],
    "keps/d": ["gRPC liveness probes for containers", "probes check container health over gRPC"],
    "keps/e": ["sidecar containers start before the app", "init containers that keep running"],
    "keps/f": ["network policy for egress traffic", "egress rules of a network policy"],
}
SET = CalibrationSet(
    chunks=[text for texts in DOCS.values() for text in texts],
    docs=[doc for doc, texts in DOCS.items() for _ in texts],
    queries=["priority preempt pods", "volume snapshot", "kubelet logging", "grpc probes containers",
             "sidecar containers", "egress network policy"],
    relevant=[frozenset({doc}) for doc in DOCS],
    digest="fake-set",
)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """The hashing embedder's vectors, bent by `noise` (0: the reference's own), costing `per_text`
    seconds of the fake clock per text plus `per_call` per call."""

    dim = 64
    tokenizer = None

    def __init__(self, name: str, clock: Clock, per_text: float, per_call: float = 0.0, noise: float = 0.0,
                 scramble: bool = False):
        self.model_id = f"fake+{name}"
        self.clock, self.per_text, self.per_call, self.noise, self.scramble = clock, per_text, per_call, noise, scramble
        self.base = HashEmbedder(self.dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.clock.now += self.per_call + self.per_text * len(texts)
        if self.scramble:  # each text of a batch embedded as its neighbour: chunks move, hits@5 collapses
            texts = texts[1:] + texts[:1]
        vectors = self.base.embed(texts)
        if self.noise:
            vectors = vectors + self.noise * np.random.default_rng(len(texts)).standard_normal(vectors.shape)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.astype(np.float32)


# name -> (seconds per text at the worker's threads, seconds per one-query call, noise, scramble)
PROFILES = {
    "minilm-torch": (0.020, 0.008, 0.0, False),
    "minilm-torch-bf16": (0.007, 0.006, 0.001, False),  # fastest ingest, within cosine 0.999
    "minilm-onnx": (0.009, 0.003, 0.0, False),  # fastest single query
    "minilm-onnx-int8": (0.004, 0.001, 0.2, False),  # fastest of all, but vectors too far off
    "minilm-onnx-w8": (0.008, 0.0035, 0.0005, False),  # within cosine 0.999, fastest at nothing
    "minilm-openvino-bf16": (0.0075, 0.005, 0.0008, False),  # within cosine 0.999, second at ingest
}


def fake_factory(clock: Clock, profiles: dict = PROFILES, made: list | None = None):
    def factory(name: str, threads: int):
        per_text, per_query, noise, scramble = profiles[name]
        if made is not None:
            made.append((name, threads))
        # One thread per query: a query embedder pays its per-call cost, a worker's its per-text cost.
        if threads == 1:
            return FakeRuntime(name, clock, 0.0, per_query, noise, scramble)
        return FakeRuntime(name, clock, per_text, 0.0, noise, scramble)
    return factory


def settings_for(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", worker_torch_threads=2, api_torch_threads=1, **kw)


def test_the_accurate_candidates_are_kept_and_the_fastest_chosen_for_each_use(tmp_path):
    clock = Clock()
    record = calibration.calibrate(settings_for(tmp_path), SET, calibration.CANDIDATES, fake_factory(clock), clock)
    figures = record["candidates"]
    assert record["ingest"] == "minilm-torch-bf16" and record["query"] == "minilm-onnx"
    assert not figures["minilm-onnx-int8"]["kept"] and "cosine" in figures["minilm-onnx-int8"]["refused"]
    assert all(figures[n]["kept"] for n in ("minilm-torch", "minilm-torch-bf16", "minilm-onnx", "minilm-onnx-w8",
                                             "minilm-openvino-bf16"))
    assert figures["minilm-torch"]["cosine_min"] == 1.0 and figures["minilm-torch-bf16"]["cosine_min"] >= 0.999
    assert figures["minilm-torch"]["chunks_per_s"] == pytest.approx(50, rel=0.01)
    assert figures["minilm-torch-bf16"]["chunks_per_s"] == pytest.approx(1 / 0.007, rel=0.01)
    assert figures["minilm-onnx"]["query_p50_ms"] == pytest.approx(3.0, rel=0.01)
    assert record["ingest_vs_torch"] == pytest.approx(0.020 / 0.007, rel=0.01)
    assert figures["minilm-torch"]["hits_at_5"] >= 0.8  # the fake set is answerable: the filter means something


def test_a_candidate_that_loses_hits_is_refused_and_the_reference_always_stays(tmp_path):
    clock = Clock()
    # The scrambled runtime is the fastest at everything, and wrong.
    profiles = {**PROFILES, "minilm-onnx-int8": (0.001, 0.0005, 0.0, True)}
    record = calibration.calibrate(settings_for(tmp_path), SET, calibration.CANDIDATES,
                                   fake_factory(clock, profiles), clock)
    refused = record["candidates"]["minilm-onnx-int8"]["refused"]
    assert "hits@5" in refused and record["ingest"] != "minilm-onnx-int8" and record["query"] != "minilm-onnx-int8"
    # With every other candidate refused, torch fp32 (the reference) is what is left.
    only = calibration.decide({"minilm-torch": {"kept": True, "chunks_per_s": 1.0, "query_p50_ms": 9.0},
                               "minilm-onnx": {"kept": False, "chunks_per_s": 9.0, "query_p50_ms": 1.0}})
    assert only == ("minilm-torch", "minilm-torch")


def test_the_record_is_written_once_and_reused(tmp_path):
    clock, made = Clock(), []
    settings = settings_for(tmp_path)
    first = calibration.ensure_record(settings, SET, names=calibration.CANDIDATES,
                                      factory=fake_factory(clock, made=made), clock=clock)
    path = calibration.record_path(settings, SET)
    assert path.parent == settings.data_dir / "calibration" and json.loads(path.read_text()) == first
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".json"] == [path.name]  # no temporary left
    assert first["host"]["worker_threads"] == 2 and first["host"]["set"] == "fake-set"
    calls = len(made)
    again = calibration.ensure_record(settings, SET, names=calibration.CANDIDATES,
                                      factory=fake_factory(clock, made=made), clock=clock)
    assert again == first and len(made) == calls  # read, not measured
    # Another thread count (or CPU, package version, set) is another record.
    assert calibration.record_path(settings.with_(worker_torch_threads=4), SET) != path


def test_calibrators_starting_together_calibrate_once(tmp_path, monkeypatch):
    settings = settings_for(tmp_path)
    runs = []

    def slow_calibrate(settings, cset, **kw):
        runs.append(threading.get_ident())
        done.wait(5)  # hold the lock until the other calibrator is waiting for it
        return {"ingest": "minilm-onnx", "query": "minilm-onnx", "ingest_vs_torch": 2.0, "seconds": 1.0,
                "candidates": {}, "host": {}, "by": threading.get_ident()}

    done = threading.Event()
    monkeypatch.setattr(calibration, "calibrate", slow_calibrate)
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(calibration.ensure_record(settings, SET)))
               for _ in range(2)]
    for t in threads:
        t.start()
    deadline = threading.Event()
    for _ in range(500):  # until one calibrates
        if runs:
            break
        deadline.wait(0.01)
    done.set()
    for t in threads:
        t.join(10)
    assert len(runs) == 1 and len(results) == 2 and results[0] == results[1]


def test_a_worker_under_minilm_calibrates_and_embeds_with_the_ingest_choice(tmp_path):
    clock, made = Clock(), []
    factory = fake_factory(clock, made=made)
    ingest = CalibratedIngest(settings_for(tmp_path), 2, factory=factory, cset=SET,
                              names=calibration.CANDIDATES, clock=clock)
    assert ingest.dim == 384 and not made  # nothing measured until something is embedded
    # Its id loads nothing; the first embed does not wait: the default runtime answers while the
    # calibration runs aside.
    assert ingest.model_id == runtime_model_id(calibration.MINILM_DEFAULT) and not made
    assert ingest.embed(["a text"]).shape == (1, 64)
    assert ingest.pinned().model_id in (f"fake+{calibration.MINILM_DEFAULT}", "fake+minilm-torch-bf16")
    ingest.wait(30)
    assert ingest.model_id == "fake+minilm-torch-bf16"
    status = ingest.status()
    assert status["runtime"] == "minilm-torch-bf16" and status["calibration"]["state"] == "recorded"
    assert status["calibration"]["candidates"]["minilm-onnx-int8"]["kept"] is False


def test_a_calibration_that_fails_leaves_the_default_runtime(tmp_path):
    def broken(name, threads):
        if name != calibration.MINILM_DEFAULT:
            raise RuntimeError("no such runtime here")
        return FakeRuntime(name, Clock(), 0.0)

    ingest = CalibratedIngest(settings_for(tmp_path), 2, factory=broken, cset=SET, names=calibration.CANDIDATES)
    ingest.embed(["a text"])
    ingest.wait(30)
    assert ingest.model_id == f"fake+{calibration.MINILM_DEFAULT}"
    assert not calibration.record_path(settings_for(tmp_path), SET).exists()  # tried again by the next process


def test_the_api_starts_on_the_default_and_switches_when_a_record_appears(tmp_path):
    clock = Clock()
    settings = settings_for(tmp_path)
    queries = CalibratedQueries(settings, 1, factory=fake_factory(clock), recheck_seconds=0.0, cset=SET)
    assert queries.runtime == calibration.MINILM_DEFAULT and queries.status()["calibration"] == {"state": "pending"}
    queries.check(wait=True)
    assert queries.runtime == calibration.MINILM_DEFAULT  # still no record
    calibration.ensure_record(settings, SET, names=calibration.CANDIDATES, factory=fake_factory(clock), clock=clock)
    # The profile's query choice is the default itself: point the record elsewhere to see a switch.
    path = calibration.record_path(settings, SET)
    path.write_text(json.dumps({**json.loads(path.read_text()), "query": "minilm-torch-bf16"}))
    queries.check(wait=True)
    assert queries.runtime == "minilm-torch-bf16" and queries.model_id == "fake+minilm-torch-bf16"
    assert queries.status()["calibration"]["query"] == "minilm-torch-bf16"
    # A process started after the record reads it at once.
    later = CalibratedQueries(settings, 1, factory=fake_factory(clock), cset=SET)
    assert later.runtime == "minilm-torch-bf16"


@pytest.mark.parametrize("forced", ["hash", "minilm-onnx"])
def test_a_forced_runtime_skips_calibration(tmp_path, forced):
    svc = make_services(settings_for(tmp_path, embedder=forced), client=fakeredis.FakeRedis(decode_responses=True))
    svc.calibrates = True  # even in a worker
    embedder = svc.embedder
    assert isinstance(embedder, HashEmbedder if forced == "hash" else OnnxMiniLMEmbedder)
    assert svc.embedder_status()["calibration"] == {"state": "forced"}
    assert not (tmp_path / "data" / "calibration").exists()


def test_minilm_means_calibrated_in_a_worker_and_the_record_in_the_api(tmp_path):
    client = fakeredis.FakeRedis(decode_responses=True)
    api = make_services(settings_for(tmp_path), client=client)
    assert isinstance(api.embedder, CalibratedQueries)
    assert api.embedder_status()["runtime"] == calibration.MINILM_DEFAULT
    worker = make_services(settings_for(tmp_path), client=client)
    worker.calibrates = True
    assert isinstance(worker.embedder, CalibratedIngest)


def test_a_cpu_without_bf16_neither_calibrates_nor_accepts_it(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    read = embedders.cpu_flags
    assert read(cpuinfo) == {"fpu", "sse2", "avx2", "avx512f", "avx512_vnni"}
    monkeypatch.setattr(embedders, "cpu_flags", lambda: read(cpuinfo))
    embedders.bf16_supported.cache_clear()
    embedders.openvino_bf16_supported.cache_clear()
    try:
        assert not embedders.bf16_supported() and not embedders.openvino_bf16_supported()
        assert not {"minilm-torch-bf16", "minilm-openvino-bf16"} & set(calibration.candidates())
        for name in ("minilm-torch-bf16", "minilm-openvino-bf16"):
            with pytest.raises(RuntimeError, match="bfloat16"):
                make_runtime(name, settings_for(tmp_path), 1)
    finally:
        embedders.bf16_supported.cache_clear()
        embedders.openvino_bf16_supported.cache_clear()
    assert calibration.candidates(bf16=True) == calibration.CANDIDATES


def test_the_committed_set_holds_chunks_of_every_relevant_document():
    full = calibration.load_set()
    assert len(full.chunks) == 256 and len(full.queries) == 48
    assert all(q & set(full.docs) for q in full.relevant)
    assert calibration.load_set(chunks=8, queries=4).digest != full.digest


@pytest.mark.model
def test_the_real_runtimes_calibrate_on_a_tiny_set(tmp_path):
    settings = settings_for(tmp_path)
    cset = calibration.load_set(chunks=8, queries=4)
    record = calibration.ensure_record(settings, cset, passes=1)
    figures = record["candidates"]
    assert set(figures) == set(calibration.candidates())
    assert figures["minilm-torch"]["cosine_min"] == pytest.approx(1.0, abs=1e-5)
    assert figures["minilm-onnx"]["cosine_min"] >= 0.9999 and figures["minilm-onnx"]["kept"]
    if "minilm-torch-bf16" in figures:
        assert figures["minilm-torch-bf16"]["cosine_min"] >= 0.999
    assert record["ingest"] in figures and figures[record["ingest"]]["kept"]
    assert record["query"] in figures and figures[record["query"]]["kept"]
    assert all(fig["chunks_per_s"] > 0 and fig["query_p50_ms"] > 0 for fig in figures.values())
    assert record["host"]["cpu"] and json.loads(calibration.record_path(settings, cset).read_text()) == record


def test_a_record_this_release_did_not_write_is_calibrated_again(tmp_path):
    """A hand-edited or truncated record (an unknown runtime, a missing field) is no record: nothing
    embeds with a name it cannot make."""
    path = tmp_path / "record.json"
    for bad in ('{"ingest": "minilm-gpu", "query": "minilm-onnx", "candidates": {}}', "[1, 2]", "{",
                '{"ingest": "minilm-onnx", "query": "minilm-onnx", "candidates": {}}'):
        path.write_text(bad)
        assert calibration.read_record(path) is None


def test_readiness_alone_finds_a_record_written_later(tmp_path):
    """An API that embeds no query (nobody searches yet) still shows the record /readyz asks about."""
    clock = Clock()
    settings = settings_for(tmp_path)
    queries = CalibratedQueries(settings, 1, factory=fake_factory(clock), recheck_seconds=0.0, cset=SET)
    calibration.ensure_record(settings, SET, names=calibration.CANDIDATES, factory=fake_factory(clock), clock=clock)
    wait_for(lambda: queries.status()["calibration"]["state"] == "recorded", timeout=10,
             message="status to find the record")
