"""IVF specifics: a coarse quantizer trained once and reused across versions, inverted lists edited in
memory (rows added to given lists), exact search over the lists, and nprobe tuned at build time.

**When a trained quantizer is reused.** Training (k-means) is most of a large build, so a new IVF
version reuses the previous version's centroids (a copy) unless one of these measured rules says the
data has moved away from them. At training the manifest records, under "ivf_training": the rows it was
trained for, nlist, `far_ip` (the 5th percentile of a row's inner product with its nearest centroid,
over the rows added at training that k-means did not train on: 5% of such rows lie "far" from every
centroid), the list-size imbalance factor, and two counters (rows assigned to lists since training,
and how many of them fell below `far_ip`). A later build retrains when

- **size**: the live rows are outside [0.5, 2] x the trained rows: lists would be twice as long (or
  half as full) as `ivf_lists` plans, and searches pay for it;
- **drift**: of the rows assigned since training (once there are at least 200), more than 10% fell
  below `far_ip` (twice the 5% seen at training): new data lands between the centroids, where a few
  probed lists no longer hold a query's neighbours;
- **imbalance**: the lists' imbalance factor (nlist * sum(size^2) / rows^2, 1.0 when even) is more
  than twice the one at training: searches scan the overfull lists far more often.

All three are computed from the assignment that adding rows needs anyway, so deciding costs nothing.

**Query-like probes for nprobe.** Without caller-given queries, `tune_nprobe` measures recall@10 on
200 probes made from a random sample of indexed rows, each moved away from its row to where real
queries sit: to a cosine with the row drawn from QUERY_COSINES (the measured cosine of a real question
to the best chunk labelled relevant to it), along a random Gaussian mix of the sampled rows' offsets from
their mean (a direction shaped like the data's spread, without the common direction sentence embeddings
share). Rows themselves are far easier: a real all-MiniLM-L6-v2 query's nearest chunk has cosine ~0.55
where a chunk's nearest other chunk has ~0.88, and IVF lists are cut around the rows, so on data shaped like
MiniLM's (shared/index/realistic.py, 200k rows, 1788 lists) held-out rows reached 0.96 at nprobe 4
while held-out queries got 0.41 there and needed nprobe 256 for 0.96. The exact answer of a probe is
over every row, its own row included (the chunk it was made from is what it seeks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

FAR_PERCENTILE = 5.0
DRIFT_MAX_FAR_SHARE = 0.10
DRIFT_MIN_ROWS = 200
SIZE_RANGE = (0.5, 2.0)
# Deciles of a real question's cosine to the best chunk labelled relevant to it (68 labelled queries over
# the sample corpus, all-MiniLM-L6-v2, ONNX fp32: bench/minilm_profile.json "best_relevant_quantiles"),
# as (probability, cosine): where `query_probes` puts a probe from its row.
QUERY_COSINES = (tuple(i / 10 for i in range(11)),
                 (0.2526, 0.3587, 0.3969, 0.4672, 0.503, 0.5309, 0.5872, 0.6292, 0.6747, 0.7263, 0.9213))
PROBE_KIND = "query-like probes (held-out rows moved to real queries' cosine)"
IMBALANCE_MAX_GROWTH = 2.0
HELD_OUT_QUERIES = 200
# A tuned recall is a mean over HELD_OUT_QUERIES probes, and another draw of queries lands about a
# standard error either side of it (the per-query recalls' spread over the root of their count). A
# setting is taken only when the mean less this many standard errors reaches the target, so that the
# queries users send reach it too rather than half the time: at 2.5M rows, held-out queries had
# landed up to 0.016 under a build's estimate taken at the bare mean.
TUNE_MARGIN_SE = 2.0


SCORE_BLOCK = 1 << 24  # scores held at once by `nearest_centroid`: 64 MiB of float32, whatever the lists


def nearest_centroid(centroids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner product with the nearest of `centroids`, its number) for each row, exactly: each block of
    rows is one matrix product with all centroids, then each row's best. FAISS's search for the single
    nearest does the same product in smaller tiles and a heap per row: 9,300 rows/s against 49,500 at
    4,000 centroids, 2,550 against 15,300 at 12,649, the same answers (Intel Xeon Ice Lake, 2 cores)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    top = np.empty(len(vectors), dtype=np.float32)
    best = np.empty(len(vectors), dtype=np.int64)
    step = max(256, SCORE_BLOCK // max(1, len(centroids)))
    for start in range(0, len(vectors), step):
        scores = vectors[start:start + step] @ centroids.T
        found = scores.argmax(axis=1)
        best[start:start + step] = found
        top[start:start + step] = scores[np.arange(len(found)), found]
    return top, best


def centroids_of(quantizer: faiss.IndexFlat) -> np.ndarray:
    """A flat quantizer's centroids, read in place (no copy): valid while the quantizer lives, unchanged."""
    return faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d).reshape(quantizer.ntotal,
                                                                                          quantizer.d)


def assign(quantizer: faiss.Index, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner product with the nearest centroid, that centroid's list) for each row: `nearest_centroid`
    for an inner-product flat quantizer (what every IVF index here has), else the quantizer's search."""
    quantizer = faiss.downcast_index(quantizer)  # an IVF index's `quantizer` comes back as a bare Index
    if isinstance(quantizer, faiss.IndexFlat) and quantizer.metric_type == faiss.METRIC_INNER_PRODUCT \
            and quantizer.ntotal:
        return nearest_centroid(centroids_of(quantizer), vectors)
    top = np.empty(len(vectors), dtype=np.float32)
    lists = np.empty(len(vectors), dtype=np.int64)
    step = 65536
    for start in range(0, len(vectors), step):
        scores, ids = quantizer.search(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32), 1)
        top[start:start + step], lists[start:start + step] = scores[:, 0], ids[:, 0]
    return top, lists


SPLIT_EPS = 1.0 / 1024  # how far apart the two halves of a split cluster's centroid start (FAISS's own)


def spherical_lloyd(sample: np.ndarray, centroids: np.ndarray, iterations: int, block: int = 16384,
                    seed: int = 1234) -> np.ndarray:
    """`iterations` of spherical k-means from `centroids`: each row of `sample` goes to its nearest
    centroid (`nearest_centroid`), each centroid becomes the unit-length mean of its rows. A centroid
    left with no rows takes half of a large cluster instead, as FAISS's k-means does: a copy of that
    cluster's centroid, the two nudged apart, so no list stays empty. Sums are gathered a block of rows
    at a time (sorted by centroid)."""
    centroids = np.array(centroids, dtype=np.float32)
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        _, lists = nearest_centroid(centroids, sample)
        sums = np.zeros_like(centroids)
        for start in range(0, len(sample), block):
            part = lists[start:start + block]
            order = np.argsort(part, kind="stable")
            ordered = part[order]
            firsts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            sums[ordered[firsts]] += np.add.reduceat(sample[start:start + block][order], firsts, axis=0)
        counts = np.bincount(lists, minlength=len(centroids))
        used = counts > 0
        centroids[used] = sums[used] / np.maximum(np.linalg.norm(sums[used], axis=1, keepdims=True), 1e-12)
        _split_into_empty(centroids, counts, rng)
    return centroids


def _split_into_empty(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> None:
    """Each empty centroid becomes half of a cluster picked in proportion to its rows beyond one."""
    nudge = np.where(np.arange(centroids.shape[1]) % 2 == 0, SPLIT_EPS, -SPLIT_EPS).astype(np.float32)
    for empty in np.flatnonzero(counts == 0):
        spare = np.maximum(counts - 1, 0).astype(np.float64)
        if not spare.sum():
            return
        big = int(rng.choice(len(counts), p=spare / spare.sum()))
        centroids[empty] = centroids[big] * (1 + nudge)
        centroids[big] *= 1 - nudge
        for i in (empty, big):
            centroids[i] /= max(float(np.linalg.norm(centroids[i])), 1e-12)
        counts[empty] = counts[big] // 2
        counts[big] -= counts[empty]


def add_assigned(index: faiss.Index, vectors: np.ndarray, lists: np.ndarray, step: int,
                 between_steps: Callable[[int], None]) -> None:
    """Append rows whose lists are already known; their ids continue after `index.ntotal`. The index is
    an IVF index or a rotation in front of one (`shared.index.compressed`'s PQ4: rows rotated first)."""
    ivf = faiss.extract_index_ivf(index)
    total = len(vectors)
    for start in range(0, total, step):
        rows = np.ascontiguousarray(vectors[start:start + step], dtype=np.float32)
        assigned = np.ascontiguousarray(lists[start:start + step], dtype=np.int64)
        if isinstance(index, faiss.IndexPreTransform):
            _add_fast_scan(ivf, rotation_of(index).apply(rows), assigned)
            index.ntotal = ivf.ntotal
        else:
            add_preassigned(ivf, rows, assigned)
        between_steps(min(start + step, total))


def rotation_of(index: faiss.IndexPreTransform) -> faiss.LinearTransform:
    """The linear map in front of an index (PQ4's rotation: FAISS reads OPQ's back as a plain one)."""
    # faiss's stubs type the chain as a list; it is a C++ vector with .at().
    return faiss.downcast_VectorTransform(index.chain.at(0))  # type: ignore[attr-defined,return-value]


def _add_fast_scan(index: faiss.IndexIVF, rows: np.ndarray, lists: np.ndarray) -> None:
    """Append rows to a fast-scan IVF index (PQ4) with their lists known: the rows encoded, then each
    list grown and the new codes packed into its blocks of 32 rows in place, as FAISS's own add does
    (which would search the quantizer for every row again). Not `add_entries`: FAISS 1.15's block lists
    compare a row count with a byte count there and write past the list when a list holding a multiple
    of 1,536 rows grows again."""
    ivf = cast(faiss.IndexIVFPQFastScan, faiss.downcast_index(index))
    n = len(rows)
    if not n:
        return
    codes = np.empty((n, ivf.code_size), dtype=np.uint8)
    ivf.encode_vectors(n, faiss.swig_ptr(rows), faiss.swig_ptr(lists), faiss.swig_ptr(codes), False)
    assert ivf.invlists is not None  # an IVF index always has its inverted lists
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    packer = ivf.get_CodePacker()  # a new object Python owns and frees
    per_block, block_bytes = packer.nvec, packer.block_size
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(ivf.nlist + 1))
    flat = np.zeros((per_block, ivf.code_size), dtype=np.uint8)
    for list_no in np.flatnonzero(np.diff(bounds)):
        members = order[bounds[list_no]:bounds[list_no + 1]]
        old, new = invlists.list_size(int(list_no)), len(members)
        invlists.resize(int(list_no), old + new)  # ids and whole blocks, the new bytes zeroed
        faiss.rev_swig_ptr(invlists.get_ids(int(list_no)), old + new)[old:] = members + ivf.ntotal
        blocks = faiss.rev_swig_ptr(invlists.get_codes(int(list_no)), -(-(old + new) // per_block) * block_bytes)
        first = min(new, -old % per_block)  # rows that fill the list's last, partial block
        for i in range(first):
            packer.pack_1_c(faiss.swig_ptr(codes[members[i]]), old + i, faiss.swig_ptr(blocks))
        for start in range(first, new, per_block):  # then whole blocks (the list's last may be partial)
            take = members[start:start + per_block]
            flat[:len(take)] = codes[take]
            flat[len(take):] = 0
            packer.pack_all(faiss.swig_ptr(flat), faiss.swig_ptr(blocks[(old + start) // per_block * block_bytes:]))
    ivf.ntotal += n


def reserve_lists(index: faiss.Index, lists: np.ndarray) -> None:
    """Size the empty lists of a new IVF index for the rows `lists` assigns them, before they are added:
    appending grows a list's arrays by doubling, which held 470 MiB where 358 were needed for 1M rows of
    SQ8 codes (each list is resized to its final length and back to empty, which keeps the capacity)."""
    lists_of = faiss.extract_index_ivf(index).invlists
    invlists = faiss.downcast_InvertedLists(lists_of) if lists_of is not None else None
    if not isinstance(invlists, faiss.ArrayInvertedLists):
        return
    for list_no, count in enumerate(np.bincount(lists, minlength=invlists.nlist)):
        if count and not invlists.list_size(list_no):
            invlists.resize(list_no, int(count))
            invlists.resize(list_no, 0)


def imbalance(sizes: np.ndarray) -> float:
    total = float(sizes.sum())
    return float(len(sizes) * np.square(sizes, dtype=np.float64).sum() / total ** 2) if total else 1.0


def list_sizes(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    assert invlists is not None  # an IVF index always has its inverted lists
    return np.array([invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)


def training_record(top_ip: np.ndarray, lists: np.ndarray, trained_on: np.ndarray, nlist: int, version: int) -> dict:
    """What the manifest keeps of a training, so later builds decide on reuse without retraining.
    `top_ip` and `lists` are every row's assignment; `far_ip` is measured on the rows k-means did not
    train on (`trained_on` lists those it did), since the trained rows sit closer to their centroids
    than new rows of the same distribution ever will."""
    unseen = np.ones(len(top_ip), dtype=bool)
    unseen[trained_on] = False
    measured = top_ip[unseen] if unseen.any() else top_ip
    return {"trained_in": version, "rows": int(len(top_ip)), "nlist": int(nlist),
            "far_ip": float(np.percentile(measured, FAR_PERCENTILE)) if len(measured) else -1.0,
            "imbalance": round(imbalance(np.bincount(lists, minlength=nlist)), 4),
            "assigned_since": 0, "far_since": 0}


def after_assigning(training: dict, top_ip: np.ndarray) -> dict:
    """The training record with rows assigned by a reused quantizer counted in."""
    return {**training, "assigned_since": int(training["assigned_since"]) + int(len(top_ip)),
            "far_since": int(training["far_since"]) + int((top_ip < training["far_ip"]).sum())}


def retrain_reason(training: dict, rows: int, sizes: np.ndarray) -> str | None:
    """Why the quantizer of `training` (counters already updated) must not serve `rows` rows whose
    lists would have `sizes`; None when it may (the rules are in the module docstring)."""
    low, high = SIZE_RANGE
    if not low * training["rows"] <= rows <= high * training["rows"]:
        return f"size: {rows} rows, trained for {training['rows']}"
    assigned, far = int(training["assigned_since"]), int(training["far_since"])
    if assigned >= DRIFT_MIN_ROWS and far > DRIFT_MAX_FAR_SHARE * assigned:
        return f"drift: {far} of {assigned} rows added since training lie beyond the training's 5th percentile"
    now = imbalance(sizes)
    if now > IMBALANCE_MAX_GROWTH * float(training["imbalance"]):
        return f"imbalance: {now:.2f}, {training['imbalance']:.2f} at training"
    return None


def list_views(ivf: faiss.IndexIVF, list_no: int) -> tuple[np.ndarray, np.ndarray]:
    """Writable views of one inverted list of an in-memory IVF-Flat index: ids, and vectors."""
    invlists = ivf.invlists
    assert invlists is not None  # an IVF index always has its inverted lists
    size = invlists.list_size(list_no)
    if not size:
        return np.zeros(0, dtype=np.int64), np.zeros((0, ivf.d), dtype=np.float32)
    ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
    codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * ivf.code_size)
    return ids, codes.view(np.float32).reshape(size, ivf.d)


def exact_search(index: faiss.Index, queries: np.ndarray, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k by inner product: a flat index searches itself; an IVF-Flat index is scanned in
    blocks of about `block` rows gathered from its lists (which hold the raw vectors), so no second copy
    of the whole collection is made and FAISS is called a few times, not once per list."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return index.search(queries, k)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)

    def scan(parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        # One matrix product per block and a partial sort: about 3x faster here than faiss.knn, whose
        # BLAS blocks are small (measured on 300k x 384, 200 queries: 1.1 s against 3.3 s).
        ids = np.concatenate([p[0] for p in parts])
        scores = queries @ np.concatenate([p[1] for p in parts]).T
        take = min(k, len(ids))
        best = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < len(ids) else \
            np.broadcast_to(np.arange(len(ids)), scores.shape)
        heap.add_result(np.ascontiguousarray(np.take_along_axis(scores, best, axis=1)),
                        np.ascontiguousarray(ids[best]))

    pending, gathered = [], 0
    for list_no in range(ivf.nlist):
        ids, vectors = list_views(ivf, list_no)
        if len(ids):
            pending.append((ids, vectors))
            gathered += len(ids)
        if gathered >= block:
            scan(pending)
            pending, gathered = [], 0
    if pending:
        scan(pending)
    heap.finalize()
    return heap.D, heap.I


def sample_rows(index: faiss.Index, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random rows of the index: (ids, vectors)."""
    n = int(index.ntotal)
    rng = np.random.default_rng(seed)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        ids = np.sort(rng.choice(n, size=min(count, n), replace=False)).astype(np.int64)
        return ids, index.reconstruct_batch(ids)
    sizes = list_sizes(index)
    ends = np.cumsum(sizes)
    picks = np.sort(rng.choice(n, size=min(count, n), replace=False))
    picked: list[int] = []
    vectors = []
    for position in picks:
        list_no = int(np.searchsorted(ends, position, side="right"))
        offset = int(position - (ends[list_no] - sizes[list_no]))
        list_ids, list_vectors = list_views(ivf, list_no)
        picked.append(int(list_ids[offset]))
        vectors.append(np.array(list_vectors[offset]))
    return np.array(picked, dtype=np.int64), np.stack(vectors)


def query_probes(rows: np.ndarray, seed: int) -> np.ndarray:
    """Sampled rows (unit length, 2-d) made into query-like probes (module docstring): row i moved to a
    cosine drawn from QUERY_COSINES, along a random mix of the sample's offsets from its mean."""
    rows = np.asarray(rows, dtype=np.float32)
    rng = np.random.default_rng(seed)
    cos = np.interp(rng.random(len(rows)), *QUERY_COSINES).astype(np.float32)
    # Gaussian weights over the centred sample: directions shaped like the data's spread (its covariance).
    away = rng.standard_normal((len(rows), len(rows))).astype(np.float32) @ (rows - rows.mean(axis=0))
    away -= (away * rows).sum(axis=1, keepdims=True) * rows
    length = np.linalg.norm(away, axis=1, keepdims=True)
    away = np.where(length > 1e-6, away / np.maximum(length, 1e-12), 0.0)  # one row, or copies: no direction
    out = cos[:, None] * rows + np.sqrt(1.0 - cos**2)[:, None] * away
    return np.ascontiguousarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12),
                                dtype=np.float32)


def recall_per_query(truth_scores: np.ndarray, got_scores: np.ndarray, got_ids: np.ndarray) -> np.ndarray:
    """Each query's share of answers at least as close as its k-th exact neighbour (within float
    rounding): a tie at the k-th score counts whichever of the tied rows was returned, as
    ann-benchmarks does."""
    threshold = truth_scores[:, -1:] - 1e-5
    return ((got_scores >= threshold) & (got_ids >= 0)).mean(axis=1)


def _recall(truth_scores: np.ndarray, got_scores: np.ndarray, got_ids: np.ndarray) -> float:
    """recall@k over all queries (`recall_per_query`'s mean)."""
    return float(recall_per_query(truth_scores, got_scores, got_ids).mean())


def recall_bound(per_query: np.ndarray) -> float:
    """The mean recall less TUNE_MARGIN_SE standard errors of it: what tuning holds to the target."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 1.0
    return float(per_query.mean() - TUNE_MARGIN_SE * per_query.std(ddof=1) / np.sqrt(len(per_query)))


def nprobe_ladder(nlist: int, most: int) -> list[int]:
    """1, 2, 4, ... up to min(most, nlist), that last value included."""
    top = max(1, min(most, nlist))
    ladder = [1 << i for i in range(top.bit_length()) if 1 << i <= top]
    return ladder if ladder[-1] == top else [*ladder, top]


def tune_nprobe(index: faiss.Index, target: float, most: int, queries: np.ndarray | None = None, k: int = 10,
                seed: int = 99) -> dict:
    """Set the index's nprobe to the smallest on `nprobe_ladder` whose recall@k against exact search,
    less its margin (`recall_bound`), reaches `target` (the best tried when none does) and return
    what was measured: nprobe, recall_at_10, recall_target, queries (how many, and of which kind),
    ladder ([nprobe, recall] pairs).
    Without `queries`, query-like probes from a sample of the index's rows (module docstring)."""
    ivf = faiss.extract_index_ivf(index)
    kind = "given" if queries is not None else PROBE_KIND
    if queries is None:
        queries = query_probes(sample_rows(index, HELD_OUT_QUERIES, seed)[1], seed + 1)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, int(index.ntotal))
    if k <= 0 or not len(queries):
        return {"nprobe": 1, "recall_at_10": 1.0, "recall_target": target, "queries": 0, "query_kind": kind,
                "ladder": [], "nlist": int(ivf.nlist)}
    truth_scores, _ = exact_search(index, queries, k)
    ladder: list[list] = []  # [nprobe, recall] pairs
    bound = 0.0
    for nprobe in nprobe_ladder(ivf.nlist, most):
        # faiss's stubs omit the keyword constructor its Python layer adds to every SearchParameters.
        got = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))  # type: ignore[call-arg]
        per_query = recall_per_query(truth_scores, *got)
        ladder.append([nprobe, round(float(per_query.mean()), 4)])
        bound = recall_bound(per_query)
        if bound >= target:
            break
    reached = bound >= target
    nprobe, recall = ladder[-1] if reached else max(ladder, key=lambda pair: (pair[1], -pair[0]))
    ivf.nprobe = nprobe
    return {"nprobe": nprobe, "recall_at_10": recall, "recall_target": target, "queries": int(len(queries)),
            "query_kind": kind, "ladder": ladder, "nlist": int(ivf.nlist)}
