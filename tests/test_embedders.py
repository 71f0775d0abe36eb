"""The deterministic hashing embedder the fast tests use (the real model is tested elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shared.index.embedders import HashEmbedder, make_embedder
from shared.settings import Settings
from tests.support import ROOT

TEXTS = [
    "Pods with higher priority preempt lower priority pods when the cluster is full.",
    "Persistent volumes are resized online without restarting the pod.",
    "Services get both IPv4 and IPv6 cluster addresses.",
    "Ünïcödé words — and punctuation!",
]


def test_shape_dtype_and_unit_rows():
    vectors = HashEmbedder(dim=64).embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert HashEmbedder(dim=64).embed([]).shape == (0, 64)


def test_model_id_and_dim_follow_settings():
    embedder = make_embedder(Settings(embedder="hash", hash_dim=32), threads=1)
    assert isinstance(embedder, HashEmbedder)
    assert embedder.dim == 32 and embedder.model_id == "hash-32"
    assert embedder.embed(["x"]).shape == (1, 32)


def test_deterministic_across_instances_and_batches():
    a = HashEmbedder().embed(TEXTS)
    b = HashEmbedder().embed(TEXTS)
    assert np.array_equal(a, b)
    # A row does not depend on what else is in the batch.
    single = np.vstack([HashEmbedder().embed([t]) for t in TEXTS])
    assert np.array_equal(a, single)
    assert not np.array_equal(a[0], a[1])


def test_deterministic_across_processes():
    """Python's str hash is salted per process; the embedder must not depend on it."""
    code = ("import json, sys; from shared.index.embedders import HashEmbedder; "
            "print(json.dumps(HashEmbedder().embed(json.loads(sys.argv[1])).tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    other = np.asarray(json.loads(out), dtype=np.float32)
    assert np.array_equal(other, HashEmbedder().embed(TEXTS))


def test_similar_texts_score_higher_than_unrelated():
    query, similar, unrelated = HashEmbedder().embed([
        "online resize of persistent volumes",
        "Persistent volumes are resized online without restarting the pod.",
        "Services get both IPv4 and IPv6 cluster addresses.",
    ])
    assert float(query @ similar) > float(query @ unrelated) + 0.1
    vectors = HashEmbedder().embed(TEXTS)
    scores = vectors @ vectors.T
    assert np.allclose(np.diag(scores), 1.0, atol=1e-5)


def test_case_insensitive_words():
    a, b = HashEmbedder().embed(["Persistent Volumes", "persistent volumes"])
    assert np.array_equal(a, b)


@pytest.mark.parametrize("text", ["", "   ", "!!! ---"])
def test_text_without_words_gives_a_zero_row_without_nan(text):
    vectors = HashEmbedder(dim=16).embed([text, "some words"])
    assert np.isfinite(vectors).all()
    assert not vectors[0].any()
    assert np.linalg.norm(vectors[1]) == pytest.approx(1.0, rel=1e-5)


def test_clustered_embedder_is_deterministic_and_clustered():
    """The benchmark embedder: the same text gives the same row in any process, rows of one cluster are
    closer to each other than to other clusters, and a held-out query is never a stored row."""
    from shared.index.embedders import ClusteredEmbedder

    embedder = make_embedder(Settings(embedder="clustered"), threads=1)
    assert isinstance(embedder, ClusteredEmbedder) and embedder.model_id == "clustered-384-4096"
    rows = embedder.embed(["c7 r1", "c7 r2", "c8 r1", "c7 q1", "free text"])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(rows, ClusteredEmbedder().embed(["c7 r1", "c7 r2", "c8 r1", "c7 q1", "free text"]))
    same, other, query = rows[0] @ rows[1], rows[0] @ rows[2], rows[3] @ rows[0]
    assert same > 0.4 > 0.2 > other
    assert 0.4 < query < 0.99
