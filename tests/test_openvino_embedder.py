"""The OpenVINO bf16 embedder (shared/index/openvinoembed.py), where OpenVINO computes bf16 natively:
torch fp32's vectors within calibration's cosine floor, rows in their input order, the same vectors
from two streams as from one, request threads embedding queries at once each getting their own, and a
process holding the model exits."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from shared.index.calibration import COSINE_FLOOR, load_set
from shared.index.embedders import MiniLMEmbedder, openvino_bf16_supported
from shared.index.openvinoembed import OpenVinoMiniLMEmbedder
from tests.support import ROOT

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not openvino_bf16_supported(), reason="OpenVINO computes no bf16 natively here")]

# Calibration's own chunks (some past 256 word pieces), a query, an empty and a one-letter text.
TEXTS = load_set(chunks=24).chunks + ["how are pods preempted", "", "a"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data") / "models"


@pytest.fixture(scope="module")
def one_stream(models_dir) -> np.ndarray:
    return OpenVinoMiniLMEmbedder(models_dir, threads=1).embed(TEXTS)


def test_vectors_stay_within_the_cosine_floor_of_torch(one_stream):
    reference = MiniLMEmbedder(threads=1).embed(TEXTS)
    assert one_stream.shape == (len(TEXTS), 384) and one_stream.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(one_stream, axis=1), 1.0, atol=1e-4)
    cosine = (one_stream * reference).sum(axis=1)
    assert cosine.min() >= COSINE_FLOOR, cosine.round(5)


def test_two_streams_give_one_streams_rows_in_input_order(models_dir, one_stream):
    two = OpenVinoMiniLMEmbedder(models_dir, threads=2)
    shuffled = list(reversed(range(len(TEXTS))))
    vectors = two.embed([TEXTS[i] for i in shuffled])
    assert (vectors * one_stream[shuffled]).sum(axis=1).min() >= 0.99999
    assert (two.embed(TEXTS) * one_stream).sum(axis=1).min() >= 0.99999  # the queue is reused


def test_request_threads_embed_queries_at_once(models_dir, one_stream):
    queries = OpenVinoMiniLMEmbedder(models_dir, threads=1)
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(4)

    def embed(i: int) -> None:
        start.wait()
        for _ in range(3):
            got[i] = queries.embed([TEXTS[i]])[0]

    workers = [threading.Thread(target=embed, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert sorted(got) == [0, 1, 2, 3]
    assert min(float(got[i] @ one_stream[i]) for i in got) >= 0.99999


def test_a_process_holding_two_streams_exits(models_dir, one_stream):
    """Freeing the compiled model joins OpenVINO's stream threads: nothing of theirs may wait on the GIL."""
    code = ("import sys; from pathlib import Path; from shared.index.openvinoembed import OpenVinoMiniLMEmbedder; "
            "e = OpenVinoMiniLMEmbedder(Path(sys.argv[1]), threads=2); e.embed(['a', 'b c'] * 20); del e; "
            "f = OpenVinoMiniLMEmbedder(Path(sys.argv[1]), threads=2); f.embed(['kept to the end'] * 3)")
    done = subprocess.run([sys.executable, "-c", code, str(models_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
