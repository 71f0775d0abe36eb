"""The keyword (BM25) index of one part, scored with statistics of the whole version at query time.

A part (a block of rows a rebuild writes once, reused by later versions) holds a plain inverted index:
`kw_terms.npy` (the sorted 64-bit hashes of its tokens), `kw_indptr.npy` (where each term's postings
start), `kw_rows.npy` and `kw_tf.npy` (the local rows holding the term, ascending, and how often) and
`kw_doclen.npy` (tokens per row). Nothing in it depends on the rest of the collection.

Why not bm25s, as format 1 (`shared.index.keyword`) does: bm25s stores finished scores, with the idf
and the average row length of its own rows baked in, so two of its indexes cannot be scored as one
collection, and a row deleted later would still count in both. Here a version's `KeywordSearch` counts
its live rows and their average length when it is opened, and each query token's document frequency
from the live postings of every part, so a version made of several parts with deletion masks scores
exactly like one index built over its live rows, with bm25s's "lucene" formula (k1 1.5, b 0.75).
Tokens are those of `shared.index.keyword.tokenize`; a query token repeated counts again, as in bm25s.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.index.keyword import TOKENIZER, KeywordVerifyFailed, best_rows, tokenize
from shared.storage import NpyWriter, check_npy, write_npy, written

K1, B = 1.5, 0.75
# Each file and the dtype it must hold; a file of any other dtype or shape is refused.
LAYOUT: dict[str, np.dtype] = {"kw_terms.npy": np.dtype(np.uint64), "kw_indptr.npy": np.dtype(np.int64),
          "kw_rows.npy": np.dtype(np.int32), "kw_tf.npy": np.dtype(np.float32),
          "kw_doclen.npy": np.dtype(np.uint32)}
KEYWORD_PART_FILES = tuple(LAYOUT)


def term_hash(token: str) -> int:
    """A token's term: the first 8 bytes of its blake2b digest, read as a little-endian integer."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


# A part's texts are tokenized this many tokens at a time; each slice's (term, row, count) postings are
# sorted and set aside on disk, then every slice's are merged a range of terms at a time, MERGE_PAIRS
# postings or so per range. A worker's memory follows the slice, not the part: at 300 tokens a chunk
# 10M chunks are 3 billion tokens, 24 GB as the 8-byte ids the one-pass build held at once.
SLICE_TOKENS = 1 << 22
MERGE_PAIRS = 1 << 23
_SAMPLE_EVERY = 4096  # postings between the terms sampled from each sorted slice to place the ranges
SPILL_DIR = "kw-slices"  # inside the part's (temporary) directory while it is written; removed after


@dataclass
class _Slice:
    """One slice's postings set aside: term hashes ascending, then rows ascending within a term."""

    terms: np.ndarray
    rows: np.ndarray
    tf: np.ndarray


def _sliced_texts(texts: Iterable[str], slice_tokens: int) -> Iterator[tuple[list[str], array, array]]:
    """(distinct tokens, each token's place among them in text order, tokens per row) for consecutive
    slices of the rows, each closed once it holds `slice_tokens` tokens (a row is never split); the
    last may be empty."""
    vocabulary: dict[str, int] = {}
    ids, lengths = array("q"), array("q")  # machine integers: a Python list of 50M ints costs GBs
    for text in texts:
        tokens = tokenize(text)
        ids.extend(vocabulary.setdefault(t, len(vocabulary)) for t in tokens)
        lengths.append(len(tokens))
        if len(ids) >= slice_tokens:
            yield list(vocabulary), ids, lengths
            vocabulary, ids, lengths = {}, array("q"), array("q")
    yield list(vocabulary), ids, lengths


def _slice_postings(vocabulary: list[str], ids: array, lengths: array, first_row: int) -> _Slice:
    """A slice's postings, its rows numbered from `first_row`. Two tokens of one hash (odds about 1 in
    40 million for a million distinct tokens) become one term."""
    hashes = np.fromiter((term_hash(t) for t in vocabulary), dtype=np.uint64, count=len(vocabulary))
    terms, term_of_token = np.unique(hashes, return_inverse=True)
    n = len(lengths)
    # One sort of a combined key orders the pairs and counts repeats at once; term * n + row stays far
    # below 2**63 for a slice's terms and rows.
    pairs, tf = np.unique(term_of_token.reshape(-1)[np.frombuffer(ids, dtype=np.int64)] * n
                          + np.repeat(np.arange(n, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64)),
                          return_counts=True)
    term_index, rows = np.divmod(pairs, n) if n else (pairs, pairs)
    return _Slice(terms[term_index], (rows + first_row).astype(np.int32), tf.astype(np.float32))


_SPILLED = (("terms", np.dtype(np.uint64)), ("rows", np.dtype(np.int32)), ("tf", np.dtype(np.float32)))


def _set_aside(spill: Path, pieces: Iterator[_Slice]) -> list[_Slice]:
    """Each slice's postings appended to one spill file a field (three open files, however many slices),
    then mapped back: each slice a view of the maps, read later a range at a time."""
    ends = [0]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(written(spill / name, "a keyword part")) for name, _ in _SPILLED]
        for piece in pieces:
            for fh, values in zip(files, (piece.terms, piece.rows, piece.tf), strict=True):
                fh.write(np.ascontiguousarray(values).tobytes())
            ends.append(ends[-1] + len(piece.terms))
            del piece
    maps = [np.memmap(spill / name, dtype=dtype, mode="r") if ends[-1] else np.zeros(0, dtype)
            for name, dtype in _SPILLED]
    return [_Slice(*(m[a:b] for m in maps)) for a, b in zip(ends, ends[1:], strict=False)]


def _ranges(slices: list[_Slice]) -> np.ndarray:
    """Term values that cut the postings of all slices into ranges of about MERGE_PAIRS (a term is never
    cut: one term's postings are at most a row each)."""
    every = MERGE_PAIRS // _SAMPLE_EVERY
    sampled = np.sort(np.concatenate([np.asarray(s.terms[::_SAMPLE_EVERY]) for s in slices]))
    return np.unique(sampled[every::every])


def _merged(slices: list[_Slice]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(distinct terms, postings per term, rows, tf) of each range of terms in turn, over every slice:
    the slices hold ascending row blocks, so a stable sort by term keeps each term's rows ascending."""
    bounds = _ranges(slices)
    cuts = np.array([[0, *np.searchsorted(s.terms, bounds), len(s.terms)] for s in slices]).reshape(len(slices), -1)
    for j in range(cuts.shape[1] - 1):
        pieces = [(s.terms[a:b], s.rows[a:b], s.tf[a:b]) for s, a, b in zip(slices, cuts[:, j], cuts[:, j + 1],
                                                                             strict=True)]
        terms, rows, tf = (np.concatenate([p[i] for p in pieces]) for i in range(3))
        order = np.argsort(terms, kind="stable")
        terms, rows, tf = terms[order], rows[order], tf[order]
        starts = np.flatnonzero(np.concatenate(([True], terms[1:] != terms[:-1]))) if len(terms) else order
        yield terms[starts], np.diff(np.append(starts, len(terms))), rows, tf


def write_keyword_part(directory: Path, texts: Iterable[str], slice_tokens: int = SLICE_TOKENS) -> dict:
    """Tokenize each row's text and write the part's keyword files into `directory` (each write checked
    and fsynced, see `shared.storage.written`), in bounded memory (SLICE_TOKENS); returns the part's
    manifest entry."""
    spill = directory / SPILL_DIR
    spill.mkdir()
    try:
        rows, n_terms = _write_postings(directory, spill, texts, slice_tokens)
    except BaseException:
        shutil.rmtree(spill, ignore_errors=True)
        raise
    shutil.rmtree(spill)  # its maps were closed with `_write_postings`'s frame
    return {"tokenizer": TOKENIZER, "rows": rows, "terms": n_terms, "files": list(KEYWORD_PART_FILES)}


def _write_postings(directory: Path, spill: Path, texts: Iterable[str], slice_tokens: int) -> tuple[int, int]:
    """`write_keyword_part`'s work, the spill folder given: returns (rows, terms)."""
    lengths: list[np.ndarray] = []
    first_rows = [0]

    def postings_of_slices() -> Iterator[_Slice]:
        for vocabulary, ids, row_lengths in _sliced_texts(texts, slice_tokens):
            yield _slice_postings(vocabulary, ids, row_lengths, first_rows[-1])
            lengths.append(np.frombuffer(row_lengths, dtype=np.int64).astype(np.uint32))
            first_rows.append(first_rows[-1] + len(row_lengths))
            del vocabulary, ids, row_lengths  # not held while the next slice is tokenized

    slices = _set_aside(spill, postings_of_slices())
    postings = sum(len(s.terms) for s in slices)
    with written(spill / "terms.raw", "a keyword part") as terms_fh, \
            written(spill / "indptr.raw", "a keyword part") as indptr_fh, \
            written(directory / "kw_rows.npy", "a keyword part") as rows_fh, \
            written(directory / "kw_tf.npy", "a keyword part") as tf_fh:
        rows_out = NpyWriter(rows_fh, postings, None, LAYOUT["kw_rows.npy"])
        tf_out = NpyWriter(tf_fh, postings, None, LAYOUT["kw_tf.npy"])
        n_terms, done = 0, 0
        for terms, counts, term_rows, term_tf in _merged(slices):
            terms_fh.write(terms.astype(np.uint64).tobytes())
            indptr_fh.write((done + np.cumsum(counts, dtype=np.int64)).tobytes())
            rows_out.add(term_rows)
            tf_out.add(term_tf)
            n_terms, done = n_terms + len(terms), done + len(term_rows)
        rows_out.close()
        tf_out.close()
    _npy_from_raw(directory / "kw_terms.npy", spill / "terms.raw", LAYOUT["kw_terms.npy"], n_terms)
    _npy_from_raw(directory / "kw_indptr.npy", spill / "indptr.raw", LAYOUT["kw_indptr.npy"], n_terms + 1,
                  head=np.zeros(1, dtype=np.int64))
    with written(directory / "kw_doclen.npy", "a keyword part") as fh:
        write_npy(fh, np.concatenate(lengths))
    return first_rows[-1], n_terms


def _npy_from_raw(path: Path, raw: Path, dtype: np.dtype, count: int, head: np.ndarray | None = None) -> None:
    """A one-dimensional .npy of `count` values: `head`, then the values of `dtype` the raw file holds."""
    with written(path, "a keyword part") as fh, open(raw, "rb") as source:
        out = NpyWriter(fh, count, None, dtype)
        if head is not None:
            out.add(head)
        while block := source.read(1 << 20):
            out.add(np.frombuffer(block, dtype=dtype))
        out.close()


def _open(path: Path) -> np.ndarray:
    """A part's file memory-mapped, once its header is known to describe the file (nothing is
    allocated for a forged shape) and to hold the one-dimensional array of the dtype the format has."""
    try:
        shape, dtype = check_npy(path)
    except (OSError, ValueError) as exc:
        raise KeywordVerifyFailed(f"keyword part file refused: {exc}") from exc
    if len(shape) != 1 or dtype != LAYOUT[path.name]:
        raise KeywordVerifyFailed(f"{path} holds {dtype} of shape {shape}, not a 1-D {LAYOUT[path.name]} array")
    return np.load(path, mmap_mode="r", allow_pickle=False)


class KeywordPart:
    """A part's keyword files, memory-mapped and checked against each other and the part's row count."""

    def __init__(self, directory: Path, rows: int):
        self.directory = directory
        self.rows = rows
        self.terms, self.indptr, self.posting_rows, self.tf, self.doclen = (
            _open(directory / name) for name in KEYWORD_PART_FILES)
        postings = len(self.posting_rows)
        if len(self.indptr) != len(self.terms) + 1 or self.indptr[-1] != postings or len(self.tf) != postings \
                or len(self.doclen) != rows:
            raise KeywordVerifyFailed(
                f"keyword part in {directory} is inconsistent: {len(self.terms)} terms, {len(self.indptr)} "
                f"offsets ending at {self.indptr[-1] if len(self.indptr) else None}, {postings} rows, "
                f"{len(self.tf)} frequencies, "
                f"{len(self.doclen)} row lengths for {rows} rows")

    def verify(self) -> None:
        """Read everything once (the build's verify step, not every load): terms strictly ascending,
        offsets ascending from 0, every posting's row inside the part, and the frequencies adding up
        to the row lengths."""
        if len(self.terms) > 1 and not np.all(self.terms[1:] > self.terms[:-1]) \
                or self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0) \
                or len(self.posting_rows) and (self.posting_rows.min() < 0 or self.posting_rows.max() >= self.rows) \
                or np.any(self.tf < 1) or self.tf.sum(dtype=np.float64) != self.doclen.sum(dtype=np.int64):
            raise KeywordVerifyFailed(f"keyword part in {self.directory} holds postings its format never has")

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        """(local rows, term frequencies) of a term hash; empty arrays when the part lacks it."""
        i = int(np.searchsorted(self.terms, np.uint64(term)))
        if i == len(self.terms) or int(self.terms[i]) != term:
            return self.posting_rows[:0], self.tf[:0]
        start, stop = int(self.indptr[i]), int(self.indptr[i + 1])
        return self.posting_rows[start:stop], self.tf[start:stop]

    def warm(self) -> None:
        """Fault in every page of the mapped files, so the first query does not wait on the disk."""
        for values in (self.terms, self.indptr, self.posting_rows, self.tf, self.doclen):
            np.asarray(values[::max(1, 4096 // values.itemsize)]).sum()


class KeywordSearch:
    """BM25 over a version's parts: `parts` are (part, offset of its first row among the version's
    rows, deletion mask over its rows or None), `total_rows` the version's row count."""

    def __init__(self, parts: list[tuple[KeywordPart, int, np.ndarray | None]], total_rows: int):
        self.total_rows = total_rows
        self.parts = [(part, offset, _live(part, offset, deleted, total_rows)) for part, offset, deleted in parts]
        self.live_rows = sum(part.rows if live is None else int(np.count_nonzero(live))
                             for part, _, live in self.parts)
        length = sum(int(part.doclen.sum(dtype=np.int64) if live is None else part.doclen[live].sum(dtype=np.int64))
                     for part, _, live in self.parts)
        self.avgdl = length / self.live_rows if self.live_rows else 1.0

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of each of the version's rows (0 where no query token occurs or the row is deleted)."""
        scores = np.zeros(self.total_rows, dtype=np.float32)
        for term, repeats in Counter(term_hash(t) for t in tokenize(query)).items():
            hits = [(offset, part.doclen, *self._live_postings(part, live, term)) for part, offset, live in self.parts]
            df = sum(len(rows) for _, _, rows, _ in hits)
            if not df:
                continue
            idf = math.log(1 + (self.live_rows - df + 0.5) / (df + 0.5))
            for offset, doclen, rows, tf in hits:
                norm = K1 * (1 - B + B * doclen[rows] / self.avgdl)
                scores[offset + rows] += (repeats * idf * tf / (tf + norm)).astype(np.float32)
        return scores

    @staticmethod
    def _live_postings(part: KeywordPart, live: np.ndarray | None, term: int) -> tuple[np.ndarray, np.ndarray]:
        rows, tf = part.postings(term)
        if live is None:
            return rows.astype(np.int64), tf
        keep = live[rows]
        return rows[keep].astype(np.int64), tf[keep]

    def top(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, score) of the best `k` rows with a positive score, best first, ties by the lower row;
        with `allowed` (a boolean mask over the version's rows) only among those rows."""
        return best_rows(self.scores(query), k, allowed)

    def warm(self) -> None:
        for part, _, _ in self.parts:
            part.warm()


def _live(part: KeywordPart, offset: int, deleted: np.ndarray | None, total_rows: int) -> np.ndarray | None:
    """The part's live rows as a mask (None: all live), once its place and mask fit the version."""
    if offset < 0 or offset + part.rows > total_rows:
        raise ValueError(f"keyword part of {part.rows} rows at {offset} does not fit {total_rows} rows")
    if deleted is None:
        return None
    if deleted.dtype != np.bool_ or deleted.shape != (part.rows,):
        raise ValueError(f"deletion mask of {deleted.dtype} {deleted.shape} for a part of {part.rows} rows")
    return ~deleted
