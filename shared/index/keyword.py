"""The keyword (BM25) index of a version: bm25s over the same chunks as the FAISS index, row for row.

Built by the rebuild from each chunk's heading path, text and document id, saved into the version
directory (`keyword/`), verified with it and loaded memory-mapped beside the FAISS index. Row i of
the keyword index is row i of the FAISS index and of chunks.jsonl.

Tokens are runs of letters, digits and underscores, lower-cased, English stop words dropped, no
stemming: an identifier such as `InPlacePodVerticalScaling`, `KEP-1287` (`kep`, `1287`) or
`ErrImagePull` stays one exact token, which is what keyword search is for here; meaning is the vector
side's job.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

# bm25s sets its logger to DEBUG, which would print a line per build and load into our logs.
logging.getLogger("bm25s").setLevel(logging.WARNING)

KEYWORD_DIR = "keyword"
TOKEN = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(STOPWORDS_EN)
TOKENIZER = "words-lower-stop-en-v1"  # recorded in the manifest: a loader must tokenize queries alike


class KeywordVerifyFailed(RuntimeError):
    pass


def tokenize(text: str) -> list[str]:
    return [t for t in (m.group(0).lower() for m in TOKEN.finditer(text)) if t not in STOPWORDS]


def keyword_text(record: dict) -> str:
    """What the keyword index sees of a chunk: its heading path, its text and its document id (so a
    KEP number or a file name in the id finds every chunk of that document)."""
    return " ".join([*record.get("heading_path", []), record.get("text", ""), record.get("doc_id", "")])


def build(records: list[dict]) -> bm25s.BM25:
    index = bm25s.BM25()
    corpus = [tokenize(keyword_text(r)) for r in records] or [[]]
    if not any(corpus):
        # bm25s needs a vocabulary of at least one token; "" never comes out of `tokenize`, so no
        # query matches it. (An empty collection still gets an index, of one empty row.)
        corpus[0] = [""]
    index.index(corpus, show_progress=False)
    return index


def save(directory: Path, records: list[dict]) -> dict:
    """Build and write the keyword index of `records` under `directory/keyword`; returns its manifest
    entry (tokenizer, documents, bytes on disk)."""
    target = directory / KEYWORD_DIR
    build(records).save(target, show_progress=False)
    return {"tokenizer": TOKENIZER, "documents": len(records), "library": f"bm25s {bm25s.__version__}",
            "bytes": sum(p.stat().st_size for p in target.iterdir())}


def verify(directory: Path, manifest: dict) -> None:
    """The saved keyword index loads and covers exactly the vectors of the version."""
    entry = manifest.get("keyword") or {}
    try:
        index = load(directory, mmap=False)
    except (OSError, ValueError) as exc:
        raise KeywordVerifyFailed(f"keyword index in {directory} does not load: {exc}") from exc
    expected = max(1, manifest["vectors"])  # an empty collection indexes one empty document
    if index.scores["num_docs"] != expected or entry.get("documents") != manifest["vectors"]:
        raise KeywordVerifyFailed(f"keyword index has {index.scores['num_docs']} rows, the version "
                                  f"{manifest['vectors']} vectors")
    if entry.get("tokenizer") != TOKENIZER:
        raise KeywordVerifyFailed(f"keyword tokenizer {entry.get('tokenizer')!r}, expected {TOKENIZER!r}")


def load(directory: Path, mmap: bool = True) -> bm25s.BM25:
    return bm25s.BM25.load(directory / KEYWORD_DIR, mmap=mmap, show_progress=False)


class KeywordIndex:
    """A loaded keyword index: BM25 scores of every row for a query."""

    def __init__(self, directory: Path, rows: int):
        self.index = load(directory, mmap=True)
        self.rows = rows
        params = json.loads((directory / KEYWORD_DIR / "params.index.json").read_text())
        self.library_version = params.get("version")

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of each row (0 where no query token occurs)."""
        ids = self.index.get_tokens_ids(tokenize(query))
        if not ids or not self.rows:
            return np.zeros(self.rows, dtype=np.float32)
        return np.asarray(self.index.get_scores_from_ids(ids), dtype=np.float32)[:self.rows]

    def warm(self) -> None:
        """Read the memory-mapped score arrays once, so the first query does not fault them in."""
        for name in ("data", "indices", "indptr"):
            np.asarray(self.index.scores[name]).sum()

    def top(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, score) of the best `k` rows with a positive score, best first; with `allowed` (a
        boolean mask over rows) only among those rows."""
        return best_rows(self.scores(query), k, allowed)


def best_rows(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(row, score) of the best `k` rows with a positive score, best first, ties by the lower row; with
    `allowed` (a boolean mask over rows) only among those rows. Shared by both keyword index formats,
    so they rank alike."""
    if allowed is not None:
        scores = np.where(allowed, scores, 0.0)
    candidates = np.flatnonzero(scores > 0)
    if not len(candidates) or k <= 0:
        return []
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    return [(int(i), float(scores[i])) for i in order]
