"""Compressed vectors: IVF lists of codes instead of floats, and re-ranking by the float rows.

Past `compress_threshold` rows a part's FAISS index keeps codes on the collection's shared coarse
quantizer, and the part also keeps its float vectors in `vectors.npy`, which an API process
memory-maps and never reads in full. A search asks the compressed index for `rerank` x k candidates in
`nprobe` lists, scores those candidates against their float rows (one small matrix product), and keeps
the best k: the codes' rounding only decides which rows are candidates.

The float rows are float16 by default (`SWAPLINE_RERANK_ROWS`; float32 kept exact): half the file, so
at 10M rows 7.7 GB instead of 15.4 GB stays in the page cache beside the rest, and a search's re-rank
reads from memory instead of the disk. Float16 keeps each component to within 2^-11 of itself, so a
score between unit vectors moves by at most 2^-11 (about 5e-4; 1e-5 is typical) and ranks change only
between candidates that close; a part written with float32 rows is read as it is.

Two codes (`SWAPLINE_COMPRESS_CODES`):

- `pq4`, the default (kind `ivf-opq-pq4fs-ip`): a learned OPQ rotation, then product quantization of
  4 dimensions per sub-quantizer, 16 centroids each (4 bits): 48 B a vector at 384-d, scanned by FAISS's
  fast-scan kernels (codes in blocks of 32 rows, distances from SIMD table look-ups). The rotation
  spreads the variance over the sub-spaces; MiniLM's falls off like a power law, and without it the
  codes rank too coarsely for any re-rank depth to win back (1M realistic rows, nprobe 1,024, depth 64:
  recall 0.93 without, 0.985 with).
- `sq8` (kind `ivf-sq8-ip`): one byte per dimension, 384 B a vector, residuals to the row's centroid
  (FAISS's default), so the 8 bits cover a list's spread. It ranks finer, so a shallower re-rank does.

Why PQ4 by default: a search reads every code in the probed lists, and real queries need many lists.
On 1M realistic rows (200 held-out queries, one FAISS thread, this 2-core AMD EPYC): SQ8 reached recall
0.9555 at nprobe 512 in 11.3 ms a search; PQ4 0.9605 at nprobe 512 and depth 64 in 1.9 ms (FAISS's
OPQ rotation; `train_rotation`'s reached 0.9675 at the same settings). At 10M, SQ8
needed 1,024 of 12,649 lists for 0.97: 810k codes, 310 MB read, 45 ms a search. PQ4's price: a deeper
re-rank (up to 64 x k float rows read from the mapped file per search) and a rotation trained at every
full build (`train_rotation`: OPQ_ITERATIONS passes over OPQ_TRAIN_ROWS rows, 17.5 s here).

The rotation is orthonormal, so inner products are unchanged: the part's IVF holds the collection's
centroids rotated, a row lands in the same list as in any other kind, and `coarse_quantizer` turns them
back for the next build.

**Tuning.** `tune` measures, on query-like probes made from held-out rows (as
`shared.index.ivf.tune_nprobe`: moved to where real queries sit from what they seek), recall@10 for
every (nprobe, rerank) pair of the two ladders with one search per nprobe (a candidate list cut to
r x k is what a search for r x k returns), and picks the smallest nprobe at which some depth reaches
the target, with the smallest such depth.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import faiss
import numpy as np

from shared.index import ivf
from shared.storage import check_npy

HELD_OUT_QUERIES = ivf.HELD_OUT_QUERIES
VECTORS_FILE = "vectors.npy"  # a compressed part's float rows (ROW_DTYPES), in row order
# SWAPLINE_RERANK_ROWS: how a new part stores its float rows.
ROW_DTYPES: dict[str, np.dtype] = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}
PQ_DIMS = 4  # dimensions per 4-bit sub-quantizer: 96 at 384-d, 48 B a row
OPQ_TRAIN_ROWS = 65_536  # the sample OPQ's rotation is trained on (FAISS's own cap for it)
OPQ_ITERATIONS = 20  # passes of `train_rotation`

Rows = Callable[[int], Iterator[np.ndarray]]  # slice size -> the float rows, slice by slice, in order
Take = Callable[[np.ndarray], np.ndarray]  # sorted distinct row numbers -> their rows, as float32


def _npy_header(path: Path) -> tuple[tuple[int, ...], int, np.dtype]:
    """(shape, where the data starts, dtype) of a .npy file whose header `check_npy` found to describe
    exactly the bytes it holds."""
    shape, dtype = check_npy(path)
    return shape, os.path.getsize(path) - int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, dtype


def row_dtype(path: Path) -> tuple[tuple[int, ...], int, np.dtype]:
    """(shape, where the data starts, dtype) of a part's float rows file: 2-d float16 or float32."""
    shape, offset, dtype = _npy_header(path)
    if len(shape) != 2 or dtype not in ROW_DTYPES.values():
        raise ValueError(f"{path}: {shape} {dtype} rows, not 2-d float16 or float32")
    return shape, offset, dtype


def npy_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-d .npy file, read (not mapped): a build that streams a file holds only
    the slice, and no mapped page of the file stays counted in its resident memory."""
    shape, offset, dtype = _npy_header(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        stop = min(stop, shape[0])
        if stop <= start:
            return np.zeros((0, shape[1]), dtype=dtype)
        fh.seek(start * shape[1] * dtype.itemsize, 1)
        return np.fromfile(fh, dtype=dtype, count=(stop - start) * shape[1]).reshape(stop - start, shape[1])


class MappedRows:
    """A part's float rows (a 2-d float16 or float32 .npy file) memory-mapped for re-ranking, which reads
    a few hundred rows at random a search (`take`, as float32).

    Read-ahead is off (MADV_RANDOM), so a row read from a cold disk does not bring in the 128 KiB around
    it. `take` first asks the kernel for every wanted row at once (MADV_WILLNEED), so the reads from
    disk overlap instead of waiting on one page fault after another: 320 rows at random from a cold
    15 GB file took 47 ms one fault at a time, 4 ms asked for first, and the asking costs 0.3 ms when
    every row is cached already (Intel Xeon, 2 cores, virtio disk). Pages already in the page cache
    are still mapped around each row touched (the kernel's fault-around, 64 KiB): with the file cached,
    as right after a build, the resident mapped pages grew to about the whole file after 400 searches
    at 2.5M rows all the same (4.1 GB of a 3.8 GB float file and the tables). They are clean file
    pages the kernel reclaims under pressure, not the process's own memory."""

    def __init__(self, path: Path):
        (rows, dim), self._offset, dtype = row_dtype(path)
        with open(path, "rb") as fh:
            self._mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._mapped.madvise(mmap.MADV_RANDOM)
        self._width = dim * dtype.itemsize
        self.array = np.frombuffer(self._mapped, dtype=dtype, count=rows * dim,
                                   offset=self._offset).reshape(rows, dim)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (sorted, distinct) as float32, every one asked of the kernel before any is read."""
        if len(ids) and not 0 <= ids[0] <= ids[-1] < len(self.array):
            raise IndexError(f"rows {ids[0]}..{ids[-1]} of {len(self.array)}")
        for row in ids.tolist():
            start = self._offset + row * self._width
            page = start - start % mmap.PAGESIZE
            self._mapped.madvise(mmap.MADV_WILLNEED, page, start + self._width - page)
        return self.array[ids].astype(np.float32, copy=False)


class RowFile:
    """Rows of a part's float rows file read by number (`take`, as float32), each with one pread: a
    build's tuning reads a few hundred thousand rows at random, and through a mapping the kernel's
    fault-around would leave up to 64 KiB of the file mapped per row, counted in the worker's resident
    memory (a 10M build's peak held 7 GB of such pages). Close it (`with`) when done."""

    def __init__(self, path: Path):
        (self.rows, self.dim), self.offset, self.dtype = row_dtype(path)
        self.fd = os.open(path, os.O_RDONLY)

    def take(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=self.dtype)
        width = self.dim * self.dtype.itemsize
        for i, row in enumerate(ids.tolist()):
            if not 0 <= row < self.rows:
                raise IndexError(f"row {row} of {self.rows}")
            if os.preadv(self.fd, [out[i]], self.offset + row * width) != width:
                raise OSError(f"row {row}: short read")
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *_) -> None:
        self.close()


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


def pq_supported(dim: int) -> bool:
    """Whether `dim` splits into an even number of 4-dimension sub-quantizers (else a compressed build
    uses SQ8): an odd number makes FAISS pad each code by half a byte, which `check_index_size` refuses."""
    return dim % (2 * PQ_DIMS) == 0


def _rotated(quantizer: faiss.Index, rotation: faiss.VectorTransform) -> faiss.Index:
    """A flat inner-product quantizer holding `quantizer`'s centroids rotated."""
    out = faiss.IndexFlatIP(quantizer.d)
    out.add(rotation.apply(quantizer.reconstruct_n(0, quantizer.ntotal)))
    return out


def _pq_ivf(quantizer: faiss.Index, rotation: faiss.VectorTransform) -> faiss.IndexIVFPQFastScan:
    dim = quantizer.d
    return faiss.IndexIVFPQFastScan(_rotated(quantizer, rotation), dim, quantizer.ntotal, dim // PQ_DIMS, 4,
                                    faiss.METRIC_INNER_PRODUCT)


def train_rotation(sample: np.ndarray, iterations: int = OPQ_ITERATIONS) -> faiss.LinearTransform:
    """OPQ's rotation (Ge et al., "Optimized Product Quantization", the non-parametric solution): start
    from the identity; then, `iterations` times, train 4-bit PQ codebooks on the rotated rows,
    reconstruct them, and take the rotation that best maps the rows onto their reconstructions (an
    orthogonal Procrustes problem: U V^T from the SVD of X^T Y). Written here rather than FAISS's
    OPQMatrix, which spent 3-5 s an iteration on this machine whatever the sample size (66 s for 20
    iterations on 65,536 x 384; this: 17.5 s, recall@10 at nprobe 512 and depth 64 on 1M realistic
    rows 0.9675 against OPQMatrix's 0.959). The codebooks restart from the last ones each pass."""
    rows = np.ascontiguousarray(sample, dtype=np.float32)
    dim = rows.shape[1]
    rotation = np.eye(dim, dtype=np.float32)
    pq = faiss.ProductQuantizer(dim, dim // PQ_DIMS, 4)
    for iteration in range(iterations):
        rotated = np.ascontiguousarray(rows @ rotation)
        pq.cp.niter = 20 if iteration == 0 else 4
        pq.train(rotated)
        pq.train_type = faiss.ProductQuantizer.Train_hot_start
        # faiss's stubs give the C++ signature; its Python layer takes and returns arrays.
        rebuilt = cast(np.ndarray, pq.decode(pq.compute_codes(rotated)))  # type: ignore[call-arg]
        left, _, right = np.linalg.svd(rows.T @ rebuilt)
        rotation = (left @ right).astype(np.float32)
    # FAISS applies A to column vectors (y = A x); rows here are multiplied on the right (x R): A = R^T.
    return _linear_map(rotation.T)


def _linear_map(matrix: np.ndarray) -> faiss.LinearTransform:
    """A trained FAISS linear map y = A x with A = `matrix` (square, no bias)."""
    out = faiss.LinearTransform(matrix.shape[1], matrix.shape[0], False)
    faiss.copy_array_to_vector(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), out.A)
    out.is_trained = True
    return out


def pq_train(quantizer: faiss.Index, sample: np.ndarray) -> faiss.Index:
    """An empty OPQ + IVF-PQ4 fast-scan index on the collection's trained `quantizer` (left as it is):
    the rotation trained on at most OPQ_TRAIN_ROWS rows of `sample`, then the 4-bit codebooks on those
    rows rotated (FAISS runs no k-means on the quantizer: it is trained and full)."""
    # Rows spread evenly over the sample, which is in row order (a prefix would be the oldest documents).
    sample = np.ascontiguousarray(sample[::max(1, -(-len(sample) // OPQ_TRAIN_ROWS))], dtype=np.float32)
    rotation = train_rotation(sample)
    ivf_index = _pq_ivf(quantizer, rotation)
    ivf_index.train(rotation.apply(sample))
    return _with_rotation(rotation, ivf_index)


def _with_rotation(rotation: faiss.VectorTransform, ivf_index: faiss.Index) -> faiss.Index:
    """The rotation in front of the IVF index (faiss's wrapper keeps both alive as long as the result)."""
    return faiss.IndexPreTransform(rotation, ivf_index)


def pq_on(quantizer: faiss.Index, encoder_from: faiss.Index) -> faiss.Index:
    """An empty OPQ + IVF-PQ4 index on `quantizer` with the rotation and codebooks of `encoder_from`
    (a published part), ready to add rows: every part of a version encodes rows alike."""
    if not isinstance(encoder_from, faiss.IndexPreTransform):
        raise ValueError("the encoder comes from an index that has none")
    source = faiss.downcast_index(encoder_from.index)
    if not isinstance(source, faiss.IndexIVFPQFastScan):
        raise ValueError("the encoder comes from an index that has none")
    rotation = _rotation_of(encoder_from)
    ivf_index = _pq_ivf(quantizer, rotation)
    faiss.copy_array_to_vector(faiss.vector_to_array(source.pq.centroids), ivf_index.pq.centroids)
    ivf_index.is_trained = True
    return _with_rotation(rotation, ivf_index)


def _rotation_of(index: faiss.IndexPreTransform) -> faiss.LinearTransform:
    """A copy of the rotation in front of a PQ4 index."""
    source = ivf.rotation_of(index)
    return _linear_map(faiss.vector_to_array(source.A).reshape(source.d_out, source.d_in))


def coarse_quantizer(index: faiss.Index) -> faiss.Index:
    """A copy of the collection's coarse quantizer an IVF index was built on, in the vectors' own space
    (a PQ4 part holds the centroids rotated: rotated back here, equal to within float rounding)."""
    ivf_index = faiss.extract_index_ivf(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return faiss.clone_index(ivf_index.quantizer)
    dim = ivf_index.d
    matrix = faiss.vector_to_array(ivf.rotation_of(index).A).reshape(dim, dim)
    out = faiss.IndexFlatIP(dim)
    out.add(np.ascontiguousarray(ivf_index.quantizer.reconstruct_n(0, ivf_index.nlist) @ matrix))
    return out


def rerank(take: Take, query: np.ndarray, ids: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `keep` of candidate rows `ids` (-1 ignored) by exact inner product with `query` (one
    row), their rows read by `take` (`MappedRows.take`: only the candidates' rows are touched), best
    first."""
    ids = ids[ids >= 0]
    if not len(ids):
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    order = np.argsort(ids)  # rows read in file order
    scores = np.empty(len(ids), dtype=np.float32)
    scores[order] = np.asarray(take(ids[order]), dtype=np.float32) @ query.reshape(-1)
    best = np.argsort(-scores, kind="stable")[:keep]
    return scores[best], ids[best]


def exact_top(rows: Rows, queries: np.ndarray, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k by inner product over rows read slice by slice (a file is never held whole)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    start = 0
    for chunk in rows(block):
        scores = queries @ np.asarray(chunk, dtype=np.float32).T
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


def _exact_scores(take: Take, queries: np.ndarray, candidates: np.ndarray, group: int = 32) -> np.ndarray:
    """Each query's exact inner product with each of its candidates (-inf where there is none), the rows
    read `group` queries at a time: the float rows held follow the group, not the candidates of all."""
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(queries), group):
        ids = candidates[start:start + group]
        mask = ids >= 0
        wanted, where = np.unique(ids[mask], return_inverse=True)
        rows = take(wanted)[where]
        picked = np.repeat(np.arange(len(ids)), mask.sum(axis=1))
        scores[start:start + group][mask] = np.einsum("ij,ij->i", rows, queries[start + picked])
    return scores


def _recall_at(scores: np.ndarray, candidates: np.ndarray, depth: int, k: int, truth: np.ndarray) -> np.ndarray:
    """Each query's recall@k when searches re-rank the first depth x k candidates (their exact `scores`)."""
    fetch = min(depth * k, candidates.shape[1])
    best = np.argsort(-scores[:, :fetch], axis=1, kind="stable")[:, :k]
    # A missing candidate (-1) scores -inf: it sorts last and counts as no answer.
    got_scores = np.take_along_axis(scores[:, :fetch], best, axis=1)
    return ivf.recall_per_query(truth, got_scores, np.take_along_axis(candidates[:, :fetch], best, axis=1))


def tune(index: faiss.Index, take: Take, rows: Rows, target: float, most_nprobe: int, most_depth: int,
         k: int = 10, seed: int = 99) -> dict:
    """Set the index's nprobe to the smallest on `ivf.nprobe_ladder` at which a re-rank depth on
    `depth_ladder` reaches recall@k `target` less its margin (`ivf.recall_bound`; the best pair tried
    when none does), and return what was measured: nprobe, rerank, recall_at_10, recall_target,
    queries, query_kind, ladder ([nprobe, rerank, recall] triples), nlist. `take` reads the index's
    float rows by number (`RowFile` reads them from a file, not mapped), `rows` reads them in slices
    for the exact answers."""
    ivf_index = faiss.extract_index_ivf(index)
    n = int(index.ntotal)
    kind = ivf.PROBE_KIND
    k = min(k, n)
    if k <= 0:
        return {"nprobe": 1, "rerank": 1, "recall_at_10": 1.0, "recall_target": target, "queries": 0,
                "query_kind": kind, "ladder": [], "nlist": int(ivf_index.nlist)}
    rng = np.random.default_rng(seed)
    own = np.sort(rng.choice(n, size=min(HELD_OUT_QUERIES, n), replace=False)).astype(np.int64)
    queries = ivf.query_probes(take(own), seed + 1)
    truth, _ = exact_top(rows, queries, k)
    depths = depth_ladder(most_depth)
    ladder: list[list] = []  # [nprobe, rerank, recall]
    chosen = None
    for nprobe in ivf.nprobe_ladder(ivf_index.nlist, most_nprobe):
        candidates = _candidates(index, queries, nprobe, min(depths[-1] * k, n))
        scores = _exact_scores(take, queries, candidates)
        for depth in depths:
            per_query = _recall_at(scores, candidates, depth, k, truth)
            ladder.append([nprobe, depth, round(float(per_query.mean()), 4)])
            if ivf.recall_bound(per_query) >= target:
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
