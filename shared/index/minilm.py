"""What every runtime of all-MiniLM-L6-v2 shares: its id, its size, its tokenizer, and loading the
model once, on first use, however many threads ask for it together."""

from __future__ import annotations

import threading

from shared.index.tokens import Tokenizer, minilm_tokenizer

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


class MiniLMRuntime:
    """Base of the torch and ONNX embedders: `_open()` builds the runtime's model (or session), called
    at most once per instance; `loaded()` returns it."""

    dim = 384

    def __init__(self, threads: int, batch_size: int):
        self.threads = threads
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's WordPiece tokenizer (chunk caps), without loading the model."""
        return minilm_tokenizer()

    def _open(self):
        raise NotImplementedError

    def loaded(self):
        model = self._model
        if model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._open()
                model = self._model
        return model
