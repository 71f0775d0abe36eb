"""FAISS versions: exact and approximate (IVF) builds, write/verify, memory-mapped load, recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.index.vectorindex import (
    KIND_FLAT,
    KIND_IVF,
    MANIFEST_FILE,
    LoadedVersion,
    VerifyFailed,
    build_flat,
    build_ivf,
    measure_recall,
    verify_version,
    write_version,
)


def clustered(n: int, dim: int = 64, clusters: int = 40, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    v = centers[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(n: int) -> list[dict]:
    return [{"doc_id": f"d{i}", "chunk_id": f"d{i}#0", "text": f"text {i}", "heading_path": [], "metadata": {}}
            for i in range(n)]


@pytest.mark.parametrize("kind", [KIND_FLAT, KIND_IVF])
def test_written_version_verifies_loads_and_finds_each_vector(tmp_path, kind):
    vectors = clustered(3000)
    steps = []
    if kind == KIND_IVF:
        index = build_ivf(vectors, 500, steps.append, nprobe=16)
        extra = {"nprobe": 16}
    else:
        index = build_flat(vectors, 500, steps.append)
        extra = {}
    assert steps[-1] == 3000 and steps == sorted(steps)
    manifest = write_version(tmp_path, index, records(3000), {"kind": kind, "model": "m", **extra})
    assert manifest["vectors"] == 3000 and manifest["dim"] == 64
    assert verify_version(tmp_path)["checksum"] == manifest["checksum"]
    loaded = LoadedVersion(tmp_path, 7)
    loaded.warm()
    hits = loaded.search(vectors[1234], 5)
    assert hits[0].record["doc_id"] == "d1234" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_ivf_recall_is_measured_against_exact_search():
    vectors = clustered(4000)
    good = build_ivf(vectors, 1000, lambda done: None, nprobe=32)
    poor = build_ivf(vectors, 1000, lambda done: None, nprobe=1)
    assert measure_recall(good, vectors) >= 0.9
    assert measure_recall(poor, vectors) < measure_recall(good, vectors)
    exact = build_flat(vectors, 1000, lambda done: None)
    assert measure_recall(exact, vectors) == 1.0


def test_verify_rejects_a_tampered_version(tmp_path):
    vectors = clustered(100)
    write_version(tmp_path, build_flat(vectors, 50, lambda d: None), records(100), {"kind": KIND_FLAT, "model": "m"})
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "vectors": 99}))
    with pytest.raises(VerifyFailed):
        verify_version(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "checksum": "0" * 64}))
    with pytest.raises(VerifyFailed):
        verify_version(tmp_path)
