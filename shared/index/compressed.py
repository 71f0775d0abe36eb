"""Compressed vectors: IVF with 8-bit scalar quantization (SQ8) and exact re-ranking.

Past `compress_threshold` rows a part's FAISS index keeps one byte per dimension (384 B a vector at
384-d, a quarter of IVF-Flat) on the collection's shared coarse quantizer, and the part also keeps its
float32 vectors in `vectors.npy`, which an API process memory-maps and never reads in full. A search asks
the compressed index for `rerank` x k candidates in `nprobe` lists, scores those candidates exactly
against their float rows (one small matrix product), and keeps the best k: the answers' scores are exact
cosines, and SQ8's rounding only decides which rows are candidates. Codes are residuals to the row's
centroid (FAISS's default), so the 8 bits cover a list's spread, not the whole sphere's.

SQ8 and not PQ: at 384-d SQ8 keeps 384 B a vector (10M: 3.6 GiB, under the API's 5 GB), trains in one
pass over a sample (per-dimension ranges, no k-means per sub-space), encodes a row without a codebook
search, and ranks well enough that a re-rank depth of a few k recovers what it loses; PQ would shrink
codes further (48 B at 8x8 bits) at a recall a re-rank must win back from a much deeper candidate list.

**Tuning.** `tune` measures, on query-like probes made from held-out rows (as
`shared.index.ivf.tune_nprobe`: moved to where real queries sit from what they seek), recall@10 for
every (nprobe, rerank) pair of the two ladders with one search per nprobe (a candidate list cut to
r x k is what a search for r x k returns), and picks the smallest nprobe at which some depth reaches
the target, with the smallest such depth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

from shared.index import ivf

HELD_OUT_QUERIES = ivf.HELD_OUT_QUERIES
VECTORS_FILE = "vectors.npy"  # a compressed part's float32 rows, in row order

Rows = Callable[[int], Iterator[np.ndarray]]  # slice size -> the float32 rows, slice by slice, in order


def npy_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-d .npy file, read (not mapped): a build that streams a file holds only
    the slice, and no mapped page of the file stays counted in its resident memory."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(fh)
        stop = min(stop, shape[0])
        if stop <= start:
            return np.zeros((0, shape[1]), dtype=dtype)
        fh.seek(start * shape[1] * dtype.itemsize, 1)
        return np.fromfile(fh, dtype=dtype, count=(stop - start) * shape[1]).reshape(stop - start, shape[1])


def npy_slices(path: Path, size: int) -> Iterator[np.ndarray]:
    """A 2-d .npy file's rows, `size` at a time."""
    start = 0
    while True:
        chunk = npy_rows(path, start, start + size)
        if not len(chunk):
            return
        yield chunk
        start += len(chunk)


def sq_on(quantizer: faiss.Index, encoder_from: faiss.Index | None = None) -> faiss.Index:
    """An empty IVF-SQ8 inner-product index on a copy of a trained quantizer; with `encoder_from`, its
    8-bit encoder (per-dimension ranges) copied too, so the index is ready to add rows (no training)."""
    copy = faiss.clone_index(quantizer)
    index = faiss.IndexIVFScalarQuantizer(copy, copy.d, copy.ntotal, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    if encoder_from is not None:
        source = faiss.downcast_index(faiss.extract_index_ivf(encoder_from))
        if not isinstance(source, faiss.IndexIVFScalarQuantizer):
            raise ValueError("the encoder comes from an index that has none")
        faiss.copy_array_to_vector(faiss.vector_to_array(source.sq.trained), index.sq.trained)
        index.is_trained = True
    return index


def train_encoder(index: faiss.Index, sample: np.ndarray) -> None:
    """Train the 8-bit encoder of an IVF-SQ8 index on `sample` (its quantizer is trained already, so
    FAISS runs no k-means here)."""
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def rerank(vectors: np.ndarray, query: np.ndarray, ids: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `keep` of candidate rows `ids` (-1 ignored) by exact inner product with `query` (one
    row), read from `vectors` (memory-mapped: only the candidates' rows are touched), best first."""
    ids = ids[ids >= 0]
    if not len(ids):
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    order = np.argsort(ids)  # rows read in file order
    scores = np.empty(len(ids), dtype=np.float32)
    scores[order] = np.asarray(vectors[ids[order]], dtype=np.float32) @ query.reshape(-1)
    best = np.argsort(-scores, kind="stable")[:keep]
    return scores[best], ids[best]


def exact_top(rows: Rows, queries: np.ndarray, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k by inner product over rows read slice by slice (a file is never held whole)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    start = 0
    for chunk in rows(block):
        scores = queries @ chunk.T
        take = min(k, len(chunk))
        best = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < len(chunk) else \
            np.broadcast_to(np.arange(len(chunk)), scores.shape)
        heap.add_result(np.ascontiguousarray(np.take_along_axis(scores, best, axis=1)),
                        np.ascontiguousarray(best + start, dtype=np.int64))
        start += len(chunk)
    heap.finalize()
    return heap.D, heap.I


def depth_ladder(most: int) -> list[int]:
    """Re-rank depths tried: 1, 2, 4, ... up to `most`, that last one included."""
    return ivf.nprobe_ladder(most, most)


def _candidates(index: faiss.Index, queries: np.ndarray, nprobe: int, fetch: int) -> np.ndarray:
    """For each query, its `fetch` candidates in the compressed index's order (-1 past the found)."""
    # faiss's stubs omit the keyword constructor its Python layer adds to every SearchParameters.
    _, found = index.search(queries, fetch, params=faiss.SearchParametersIVF(nprobe=nprobe))  # type: ignore[call-arg]
    return found


def _recall_at(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, depth: int, k: int,
               truth: np.ndarray) -> float:
    """recall@k of searches that re-rank the first depth x k candidates."""
    got_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    got_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (query, row) in enumerate(zip(queries, candidates, strict=True)):
        scores, ids = rerank(vectors, query, row[:depth * k], k)
        got_scores[i, :len(ids)], got_ids[i, :len(ids)] = scores, ids
    return ivf._recall(truth, got_scores, got_ids)


def tune(index: faiss.Index, vectors: np.ndarray, rows: Rows, target: float, most_nprobe: int, most_depth: int,
         k: int = 10, seed: int = 99) -> dict:
    """Set the index's nprobe to the smallest on `ivf.nprobe_ladder` at which a re-rank depth on
    `depth_ladder` reaches recall@k `target` (the best pair tried when none does), and return what was
    measured: nprobe, rerank, recall_at_10, recall_target, queries, query_kind, ladder ([nprobe,
    rerank, recall] triples), nlist. `vectors` are the index's float rows (memory-mapped is fine),
    `rows` reads them in slices for the exact answers."""
    ivf_index = faiss.extract_index_ivf(index)
    n = int(index.ntotal)
    kind = ivf.PROBE_KIND
    k = min(k, n)
    if k <= 0:
        return {"nprobe": 1, "rerank": 1, "recall_at_10": 1.0, "recall_target": target, "queries": 0,
                "query_kind": kind, "ladder": [], "nlist": int(ivf_index.nlist)}
    rng = np.random.default_rng(seed)
    own = np.sort(rng.choice(n, size=min(HELD_OUT_QUERIES, n), replace=False)).astype(np.int64)
    queries = ivf.query_probes(vectors[own], seed + 1)
    truth, _ = exact_top(rows, queries, k)
    depths = depth_ladder(most_depth)
    ladder: list[list] = []  # [nprobe, rerank, recall]
    chosen = None
    for nprobe in ivf.nprobe_ladder(ivf_index.nlist, most_nprobe):
        candidates = _candidates(index, queries, nprobe, min(depths[-1] * k, n))
        for depth in depths:
            ladder.append([nprobe, depth, round(_recall_at(vectors, queries, candidates, depth, k, truth), 4)])
            if ladder[-1][2] >= target:
                chosen = ladder[-1]
                break
        if chosen is not None:
            break
    if chosen is None:
        chosen = max(ladder, key=lambda triple: (triple[2], -triple[0], -triple[1]))
    nprobe, depth, recall = chosen
    ivf_index.nprobe = nprobe
    return {"nprobe": nprobe, "rerank": depth, "recall_at_10": recall, "recall_target": target,
            "queries": int(len(queries)), "query_kind": kind, "ladder": ladder, "nlist": int(ivf_index.nlist)}
