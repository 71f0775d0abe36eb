"""all-MiniLM-L6-v2 on OpenVINO in bfloat16, from the ONNX fp32 export (shared/index/onnxembed.py).

OpenVINO's CPU plugin runs the graph's matrix maths in bf16 where the CPU computes bf16 natively
(avx512_bf16, AMX), with attention and the feed-forward layers fused. With two threads it runs two
streams, each a batch at a time on a core of its own. On a 2-vCPU AMD EPYC Zen 4 (avx512_bf16, no AMX)
the calibration set's 256 chunks, in groups of 128 as ingest embeds them, ran at 2.46x to 2.55x torch
fp32 (batches of 8; 2.40x with 16, 2.17x with 32), where torch bf16 runs at about 1.8x to 2.0x, with min
cosine 0.99997 to torch fp32 (scripts outside the bench; `python -m tests.bench.calibrate` measures the
candidates). Calibration (shared/index/calibration.py) measures it on each host beside the other
runtimes, and keeps it only within the same cosine and hits@5 bounds.

An API process embeds queries with one thread: one stream, and an inference request per request thread.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import numpy as np

from shared.index.minilm import MINILM_ID, MiniLMRuntime
from shared.index.onnxembed import encode, exported_model, mean_pool

OPENVINO_BF16 = "minilm-openvino-bf16"
MODEL_ID = f"{MINILM_ID}+openvino-bf16"
# Texts per inference (see above).
BATCH_SIZE = 8


@cache
def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (its BF16 capability); elsewhere a bf16
    hint falls back to fp32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoMiniLMEmbedder(MiniLMRuntime):
    """all-MiniLM-L6-v2 on OpenVINO with bf16 inference; compiled on first use (exporting the ONNX fp32
    graph first if this machine has none)."""

    model_id = MODEL_ID

    def __init__(self, models_dir: Path, threads: int, batch_size: int = BATCH_SIZE):
        super().__init__(threads, batch_size)
        self.models_dir = Path(models_dir)
        self._streams_lock = threading.Lock()  # one embed at a time drives the streams
        self._requests = threading.local()  # with one stream: an inference request per calling thread

    def _open(self):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(exported_model(self.models_dir, "fp32")))
        streams = max(1, self.threads)
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": streams,
            "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY"})
        # No Python callbacks: OpenVINO's stream threads would need the GIL to run one, and freeing the model
        # (which joins them) holds it, so a model freed with a callback set could hang its process.
        return compiled, [compiled.create_infer_request() for _ in range(streams)] if streams > 1 else []

    def embed(self, texts: list[str]) -> np.ndarray:
        compiled, streams = self.loaded()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads little; rows go back to their input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        if not streams:
            request = getattr(self._requests, "request", None)
            if request is None:
                request = self._requests.request = compiled.create_infer_request()
            for rows in batches:
                inputs = encode([texts[i] for i in rows])
                out[rows] = mean_pool(request.infer(inputs)[0], inputs["attention_mask"])
            return out
        with self._streams_lock:
            # A batch per stream at a time, the batches next to each other in length.
            for first in range(0, len(batches), len(streams)):
                running = []
                try:
                    for request, rows in zip(streams, batches[first:first + len(streams)], strict=False):
                        inputs = encode([texts[i] for i in rows])
                        request.start_async(inputs)
                        running.append((request, rows, inputs["attention_mask"]))
                finally:
                    for request, _, _ in running:
                        request.wait()  # nothing of this call left running, whatever stopped it
                for request, rows, mask in running:
                    out[rows] = mean_pool(request.get_output_tensor(0).data, mask)
        return out
