"""Compressed vectors (OPQ + IVF-PQ4 fast scan, and IVF-SQ8, both with exact re-ranking) and streamed
full builds.

The recall test runs on realistic vectors (`shared.index.realistic`: shaped like all-MiniLM-L6-v2's,
with held-out queries as far from their chunks as real questions), 50k rows, the size a unit test
affords. The builds run the real domain code (run_rebuild) on the session's
redis-server with the hashing embedder and thresholds lowered so three sizes give three kinds."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from shared.errors import RecallBelowFloor
from shared.index import compressed, ivf, parts
from shared.index.compressed import VECTORS_FILE
from shared.index.parts import open_parts, part_refs
from shared.index.vectorindex import VerifyFailed, read_manifest, train_ivf
from shared.jobs import build, merge
from shared.jobs.merge import LiveRows, latest_documents, read_live
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import request_rebuild
from shared.search.engine import search
from shared.search.filters import parse_filter
from shared.settings import MAX_RERANK
from shared.storage import TMP_PREFIX, NpyWriter
from tests.test_incremental import Collection, _docs


def wide_clusters(n: int, dim: int = 128, clusters: int = 500, seed: int = 7) -> np.ndarray:
    """Unit rows around random centres, each cluster with its own noise scale (0.04-0.14 per dimension)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.04, 0.14, clusters).astype(np.float32)
    which = rng.integers(0, clusters, n)
    rows = centres[which] + spread[which, None] * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _slices(array: np.ndarray):
    return lambda size: (array[start:start + size] for start in range(0, len(array), size))


def _compressed_index(vectors: np.ndarray, nlist: int, codes: str = "sq8") -> faiss.Index:
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT).train(vectors[:nlist * 40])
    if codes == "pq4":
        index = compressed.pq_train(quantizer, vectors[:nlist * 40])
    else:
        index = compressed.sq_on(quantizer)
        compressed.train_encoder(index, vectors[:nlist * 40])
    _, lists = ivf.assign(quantizer, vectors)
    ivf.add_assigned(index, vectors, lists, 16384, lambda done: None)
    return index


@pytest.mark.parametrize("codes", ["pq4", "sq8"])
def test_compressed_index_with_reranking_reaches_the_target_on_realistic_data(codes, tmp_path):
    from shared.index.realistic import QUERY_COSINES, RealisticVectors

    source = RealisticVectors()
    vectors = source.vectors(0, 50_000)
    fresh, _ = source.queries(np.arange(500), len(vectors), QUERY_COSINES)  # held-out: no query is a row
    index = _compressed_index(vectors, 256, codes)
    np.save(tmp_path / "vectors.npy", vectors)
    with compressed.RowFile(tmp_path / "vectors.npy") as floats:  # read by number, as a build reads them
        tuned = compressed.tune(index, floats.take, _slices(vectors), 0.95, 256, 64)
    assert tuned == compressed.tune(index, vectors.__getitem__, _slices(vectors), 0.95, 256, 64)
    assert tuned["recall_at_10"] >= 0.95 and tuned["nprobe"] > 1, tuned
    assert tuned["ladder"][-1] == [tuned["nprobe"], tuned["rerank"], tuned["recall_at_10"]]
    # What the API's search does, on queries from outside the index: within the floor too.
    truth, _ = compressed.exact_top(_slices(vectors), fresh, 10)
    got_scores = np.zeros((len(fresh), 10), dtype=np.float32)
    got_ids = np.zeros((len(fresh), 10), dtype=np.int64)
    params = faiss.SearchParametersIVF(nprobe=tuned["nprobe"])  # type: ignore[call-arg]
    _, candidates = index.search(fresh, tuned["rerank"] * 10, params=params)
    for i, (query, found) in enumerate(zip(fresh, candidates, strict=True)):
        got_scores[i], got_ids[i] = compressed.rerank(vectors.__getitem__, query, found, 10)
    assert ivf._recall(truth, got_scores, got_ids) >= 0.90
    # Scores are exact cosines, whatever the codes rounded.
    assert np.allclose(got_scores[:, 0], (vectors[got_ids[:, 0]] * fresh).sum(axis=1), atol=1e-6)
    # Without re-ranking (depth 1 at nprobe 1) the same data stays well below the target: the test has teeth.
    assert tuned["ladder"][0][:2] == [1, 1] and tuned["ladder"][0][2] < 0.9


def test_rows_added_to_pq4_lists_in_uneven_calls_equal_one_add():
    """Fast-scan lists take new rows into their last, partial block and then whole blocks, whatever the
    list held: one list grown in calls that end on a block (32 rows), on FAISS's bytes-per-block count
    (64 rows at 16-d, where its own append writes past the list) and between them."""
    dim, rows = 16, 3000
    vectors = np.random.default_rng(3).standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(vectors[:1])  # one list: every call appends to it
    lists = np.zeros(rows, dtype=np.int64)
    once = compressed.pq_train(quantizer, vectors)
    ivf.add_assigned(once, vectors, lists, 1 << 20, lambda done: None)
    steps = compressed.pq_on(quantizer, once)
    start = 0
    for size in (64, 5, 27, 1, 31, 64, 128, 100, 1600, rows):
        ivf.add_assigned(steps, vectors[start:start + size], lists[start:start + size], 7, lambda done: None)
        start = min(rows, start + size)
    assert steps.ntotal == once.ntotal == rows
    ids, codes = _list_rows(faiss.extract_index_ivf(steps), 0)
    assert np.array_equal(ids, np.arange(rows))
    assert np.array_equal(codes, _list_rows(faiss.extract_index_ivf(once), 0)[1])
    assert np.array_equal(steps.search(vectors[:20], 10)[1], once.search(vectors[:20], 10)[1])


def test_the_trained_rotation_lets_pq4_reconstruct_realistic_rows_better_than_none():
    """OPQ's point: the same 4-bit codebooks, trained after the rotation, lose less of each row."""
    from shared.index.realistic import RealisticVectors

    rows = RealisticVectors().vectors(0, 8000)
    train, held = rows[:6000], rows[6000:]

    def error(rotation: faiss.LinearTransform | None) -> float:
        pq = faiss.ProductQuantizer(rows.shape[1], rows.shape[1] // compressed.PQ_DIMS, 4)
        turned = (lambda x: x) if rotation is None else rotation.apply
        pq.train(np.ascontiguousarray(turned(train)))
        rebuilt = pq.decode(pq.compute_codes(np.ascontiguousarray(turned(held))))
        return float(((rebuilt - turned(held)) ** 2).sum(axis=1).mean())

    rotation = compressed.train_rotation(train)
    matrix = faiss.vector_to_array(rotation.A).reshape(rows.shape[1], -1)
    assert np.allclose(matrix @ matrix.T, np.eye(rows.shape[1]), atol=1e-4)  # a rotation: cosines unchanged
    assert error(rotation) < 0.8 * error(None)


def test_an_impossible_target_reports_the_best_pair_tried():
    vectors = wide_clusters(4_000, dim=32, clusters=50)
    index = _compressed_index(vectors, 32)
    tuned = compressed.tune(index, vectors.__getitem__, _slices(vectors), 1.01, 4, 2)
    assert [triple[:2] for triple in tuned["ladder"]] == [[n, d] for n in (1, 2, 4) for d in (1, 2)]
    best = max(tuned["ladder"], key=lambda t: t[2])
    assert tuned["recall_at_10"] == best[2] < 1.01


def test_tuning_recall_is_what_reranking_each_search_gives():
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    vectors[7] = vectors[3]  # a tie
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    candidates = rng.integers(0, 60, size=(5, 12))
    candidates[1, 4:] = -1  # fewer found than asked
    candidates[2, :] = [3, 7, *range(10, 20)]
    truth, _ = compressed.exact_top(_slices(vectors), queries, 3)
    scores = compressed._exact_scores(vectors.__getitem__, queries, candidates, group=2)
    for depth in (1, 2, 4):
        got = np.full((5, 3), -np.inf, dtype=np.float32)
        ids = np.full((5, 3), -1, dtype=np.int64)
        for i in range(5):  # what a search does: its first depth x k candidates re-ranked
            found_scores, found_ids = compressed.rerank(vectors.__getitem__, queries[i], candidates[i, :depth * 3], 3)
            got[i, :len(found_ids)], ids[i, :len(found_ids)] = found_scores, found_ids
        assert np.array_equal(compressed._recall_at(scores, candidates, depth, 3, truth),
                              ivf.recall_per_query(truth, got, ids))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_row_file_reads_rows_by_number_and_refuses_rows_it_lacks(tmp_path, dtype):
    rows = np.random.default_rng(2).standard_normal((300, 16)).astype(dtype)
    np.save(tmp_path / "v.npy", rows)
    with compressed.RowFile(tmp_path / "v.npy") as floats:
        wanted = np.array([0, 7, 8, 299], dtype=np.int64)
        got = floats.take(wanted)
        assert got.dtype == np.float32 and np.array_equal(got, rows[wanted].astype(np.float32))
        assert floats.take(np.zeros(0, dtype=np.int64)).shape == (0, 16)
        with pytest.raises(IndexError):
            floats.take(np.array([300]))
        floats.close()  # closed twice (then by the with): the second does nothing
    np.save(tmp_path / "i.npy", rows.astype(np.float64))
    with pytest.raises(ValueError, match="float16 or float32"):
        compressed.RowFile(tmp_path / "i.npy")


# 1,536-byte rows straddle pages; 28- and 14-byte rows share them.
@pytest.mark.parametrize(("dim", "dtype"), [(384, np.float32), (7, np.float32), (384, np.float16), (7, np.float16)])
def test_mapped_rows_take_the_rows_asked_and_refuse_rows_they_lack(tmp_path, dim, dtype):
    rows = np.random.default_rng(3).standard_normal((3000, dim)).astype(dtype)
    np.save(tmp_path / "v.npy", rows)
    mapped = compressed.MappedRows(tmp_path / "v.npy")
    assert np.array_equal(mapped.array, rows)
    wanted = np.array([0, 1, 2, 5, 1023, 1024, 2047, 2999], dtype=np.int64)
    got = mapped.take(wanted)
    assert got.dtype == np.float32 and np.array_equal(got, rows[wanted].astype(np.float32))
    assert mapped.take(np.zeros(0, dtype=np.int64)).shape == (0, dim)
    for outside in ([2999, 3000], [-1, 4]):
        with pytest.raises(IndexError):
            mapped.take(np.array(outside, dtype=np.int64))


def test_npy_rows_read_slices_written_by_the_writer(tmp_path):
    rows = np.random.default_rng(1).standard_normal((1000, 8)).astype(np.float32)
    path = tmp_path / "v.npy"
    with open(path, "wb") as fh:
        writer = NpyWriter(fh, 1000, 8)
        for start in range(0, 1000, 300):
            writer.add(rows[start:start + 300])
        writer.close()
    assert np.array_equal(np.load(path), rows)
    assert np.array_equal(compressed.npy_rows(path, 990, 2000), rows[990:])
    assert np.array_equal(np.concatenate(list(compressed.npy_slices(path, 333))), rows)
    with open(tmp_path / "w.npy", "wb") as fh, pytest.raises(ValueError, match="rows"):
        NpyWriter(fh, 10, 8).close()


def _kinds(col: Collection) -> tuple[str, dict]:
    version = col.svc.pointers.get("docs")["version"]
    return version, read_manifest(col.svc.storage.version_dir("docs", int(version)))


def _exact(col: Collection, query: str) -> dict[str, float]:
    """Every live chunk's cosine with the query (rows read from the segments)."""
    segments, _ = col.svc.collections.snapshot("docs")
    records, vectors = read_live(col.svc, "docs", segments, latest_documents(col.svc, "docs", segments), 384)
    return {rec["chunk_id"]: float(score) for rec, score in zip(records, vectors @ col.embed(query), strict=True)}


FLOAT16_SCORE = 2.0 ** -11  # how far float16 rows may move a score between unit vectors


def _recall(col: Collection, loaded, queries: list[str], k: int = 10) -> float:
    """recall@k of the version's answers against exact search (a hit counts when it reaches the exact
    k-th score, to the rows' precision: the hashing embedder ties often), after checking that every
    answer's score is exact to the precision of the float rows it was re-ranked from."""
    rows = {part.vectors.array.dtype for part in loaded.parts if part.vectors is not None}
    slack = FLOAT16_SCORE if np.dtype(np.float16) in rows else 1e-5
    reached = 0
    for query in queries:
        exact = _exact(col, query)
        kth = sorted(exact.values(), reverse=True)[k - 1]
        got = [(loaded.record(row)["chunk_id"], score) for row, score in loaded.nearest(col.embed(query), k)]
        assert len(got) == k and all(abs(score - exact[chunk]) <= slack for chunk, score in got), got
        reached += sum(score >= kth - slack for _, score in got)
    return reached / (k * len(queries))


# Queries like the rows (documents' own texts), and queries unlike any.
QUERIES = [doc["text"] for p in "abcd" for doc in _docs([f"{p}{i}" for i in range(1, 40, 8)])]
STRANGERS = [f"Note {p}{i} covers subject{i % 7}" for p in "abcd" for i in range(0, 40, 8)]


@pytest.mark.integration
@pytest.mark.parametrize(("codes", "kind"), [("pq4", "ivf-opq-pq4fs-ip"), ("sq8", "ivf-sq8-ip")])
def test_the_kind_follows_the_size_and_a_compressed_version_answers(redis_url, rclient, tmp_path, codes, kind):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=300, compress_threshold=600,
                     compress_codes=codes)
    col.ingest(_docs([f"a{i}" for i in range(200)]))
    assert col.rebuild()["kind"] == "flat-ip"
    col.ingest(_docs([f"b{i}" for i in range(200)]))
    assert col.rebuild()["kind"] == "ivf-flat-ip"
    col.ingest(_docs([f"c{i}" for i in range(300)]))
    result = col.rebuild()
    assert result["kind"] == kind and result["incremental"] is False
    assert result["full_reason"] == f"700 rows call for {kind}, version 2 is ivf-flat-ip"
    assert result["quantizer"]["reused"] is True  # the IVF-Flat version's centroids still fit
    version, manifest = _kinds(col)
    assert manifest["rerank"] == result["rerank"] >= 1 and manifest["recall_at_10"] >= 0.95
    assert [triple[:2] for triple in manifest["ladder"]][-1] == [manifest["nprobe"], manifest["rerank"]]
    loaded = col.loaded(int(version))
    part = loaded.parts[0]
    assert part.meta["kind"] == kind and VECTORS_FILE in part.meta["files"]
    assert part.vectors is not None and part.vectors.array.shape == (700, 384)
    rotation = 384 * 384 * 4 if codes == "pq4" else 0  # PQ4's file also holds its rotation matrix
    assert part.meta["files"]["index.faiss"]["bytes"] - rotation < 700 * 384 * 2  # codes, not floats
    assert _recall(col, loaded, QUERIES) >= 0.9
    loaded.nprobe, loaded.rerank = 10_000, MAX_RERANK  # every list probed, the deepest re-rank: exact
    assert _recall(col, loaded, STRANGERS) == 1.0
    # The search engine's filtered path (a FAISS selector on the codes, then the re-rank) answers too.
    hits = search(loaded, "Note c140 covers", 10, "vector", parse_filter({"metadata.source": "x"}), col.embed).hits
    assert len(hits) == 10 and all(hit["metadata"]["source"] == "x" for hit in hits)
    assert hits == sorted(hits, key=lambda hit: -hit["score"])
    # Rows added later join the compressed lists incrementally, on the published quantizer and encoder.
    col.ingest(_docs([f"d{i}" for i in range(40)]))
    more = col.rebuild()
    assert more["kind"] == kind and more["incremental"] is True and more["rerank"] == manifest["rerank"]
    loaded = col.loaded(more["version"])
    assert [p.meta["kind"] for p in loaded.parts] == [kind, kind]
    assert _recall(col, loaded, QUERIES) >= 0.9


@pytest.mark.integration
def test_parts_keep_the_float_rows_they_were_written_with(redis_url, rclient, tmp_path):
    """SWAPLINE_RERANK_ROWS says how new parts store their float rows; parts written before keep theirs
    and are searched beside the new ones."""
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=300, compress_threshold=300,
                     rerank_rows="float32")
    col.ingest(_docs([f"a{i}" for i in range(400)]))
    first = col.rebuild()
    assert col.loaded(first["version"]).parts[0].vectors.array.dtype == np.float32
    col.ingest(_docs([f"b{i}" for i in range(60)]))
    more = col.rebuild(rerank_rows="float16")
    assert more["incremental"] is True
    loaded = col.loaded(more["version"])
    assert [p.vectors.array.dtype for p in loaded.parts] == [np.float32, np.float16]
    part = loaded.parts[1]
    assert part.meta["files"]["vectors.npy"]["bytes"] < part.rows * 384 * 2 + 256  # half a float32 file
    assert _recall(col, loaded, QUERIES) >= 0.9


@pytest.mark.integration
def test_a_compressed_build_below_the_floor_is_refused_and_leaves_nothing(redis_url, rclient, tmp_path):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=300, compress_threshold=300)
    col.ingest(_docs([f"a{i}" for i in range(400)]))
    first = col.rebuild()
    col.ingest(_docs([f"b{i}" for i in range(200)]))
    strict = col.services(col.settings.with_(recall_floor=1.01, recall_target=1.01))
    job, _ = request_rebuild(strict, "docs", exclusive=False)
    with pytest.raises(RecallBelowFloor, match=r"recall@10 .* rerank .* below the floor 1.01"):
        run_rebuild(strict, job["id"])
    assert strict.pointers.get("docs")["version"] == first["version"]
    indexes = col.svc.storage.indexes_dir("docs")
    assert sorted(p.name for p in (indexes / "parts").iterdir()) == [f"p{first['version']}"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in col.svc.storage.root.rglob("*"))


@pytest.mark.integration
@pytest.mark.parametrize(("compress", "codes", "kind"),
                         [(10_000, "pq4", "ivf-flat-ip"), (300, "sq8", "ivf-sq8-ip"), (300, "pq4", "ivf-opq-pq4fs-ip")])
def test_a_streamed_build_equals_an_in_memory_build(redis_url, rclient, tmp_path, monkeypatch, compress, codes, kind):
    # Slices smaller than a segment and not aligned with one, so rows cross slice and segment edges.
    monkeypatch.setattr(build, "SLICE_ROWS", 97)
    col = Collection(redis_url, rclient, tmp_path / kind, approx_threshold=300, compress_threshold=compress,
                     compress_codes=codes)
    for batch in range(3):
        col.ingest(_docs([f"s{batch}-{i}" for i in range(170)]))
    col.delete([f"s0-{i}" for i in range(0, 170, 3)])  # superseded rows are skipped inside slices
    result = col.rebuild()
    segments, _ = col.svc.collections.snapshot("docs")
    records, vectors = read_live(col.svc, "docs", segments, latest_documents(col.svc, "docs", segments), 384)
    directory = col.svc.storage.version_dir("docs", result["version"])
    part = open_parts(directory, part_refs(directory, read_manifest(directory)))[0]
    assert [r["chunk_id"] for r in part.tables.records_range(0, part.rows)] == [r["chunk_id"] for r in records]
    # The same k-means on the same sample as training in memory.
    reference = train_ivf(vectors)
    quantizer = compressed.coarse_quantizer(part.index)  # a PQ4 part's centroids rotated back
    assert part.ivf is not None and part.ivf.nlist == reference.nlist
    assert np.allclose(quantizer.reconstruct_n(0, reference.nlist),
                       reference.quantizer.reconstruct_n(0, reference.nlist), atol=1e-5)
    # With that quantizer (and encoder), adding everything at once gives identical lists.
    whole = build._on_published(result["kind"], quantizer, part.index)
    _, lists = ivf.assign(quantizer, vectors)
    ivf.add_assigned(whole, vectors, lists, 1 << 20, lambda done: None)
    mine, theirs = part.ivf, faiss.extract_index_ivf(whole)
    for list_no in range(part.ivf.nlist):
        ids, codes = _list_rows(mine, list_no)
        assert np.array_equal(ids, _list_rows(theirs, list_no)[0])
        assert np.array_equal(codes, _list_rows(theirs, list_no)[1])
    assert result["kind"] == kind
    if part.vectors is not None:  # float16 by default (SWAPLINE_RERANK_ROWS)
        assert part.vectors.array.dtype == np.float16
        assert np.array_equal(part.vectors.array, vectors.astype(np.float16))


def _list_rows(index: faiss.IndexIVF, list_no: int) -> tuple[np.ndarray, np.ndarray]:
    """One inverted list's ids and per-row codes (fast-scan blocks unpacked, their padding left out)."""
    invlists = index.invlists
    size = invlists.list_size(list_no)
    if not size:
        return np.zeros(0, dtype=np.int64), np.zeros((0, index.code_size), dtype=np.uint8)
    ids = np.array(faiss.rev_swig_ptr(invlists.get_ids(list_no), size))
    if not isinstance(faiss.downcast_index(index), faiss.IndexIVFFastScan):
        return ids, np.array(faiss.rev_swig_ptr(invlists.get_codes(list_no), size * index.code_size))
    packer = faiss.downcast_index(index).get_CodePacker()
    blocks = -(-size // packer.nvec)
    packed = faiss.rev_swig_ptr(invlists.get_codes(list_no), blocks * packer.block_size)
    flat = np.zeros((blocks * packer.nvec, index.code_size), dtype=np.uint8)
    for block in range(blocks):
        packer.unpack_all(faiss.swig_ptr(packed[block * packer.block_size:]),
                          faiss.swig_ptr(flat[block * packer.nvec:]))
    return ids, flat[:size]


def test_live_rows_stream_the_picked_rows_in_bounded_slices(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    files, picks, want = [], [], []
    for f, n in enumerate((500, 1300)):
        rows = rng.standard_normal((n, 4)).astype(np.float32)
        np.save(tmp_path / f"{f}.npy", rows)
        picked = np.sort(rng.choice(n, size=n // 3, replace=False)).astype(np.int64)
        picked = picked[(picked < 100) | (picked > 900)]  # a long gap of superseded rows
        files.append(tmp_path / f"{f}.npy")
        picks.append(picked)
        want.append(rows[picked])
    live = LiveRows(list(zip(files, picks, strict=True)), 4)
    spans = []
    real = merge.npy_rows

    def counted(path, start, stop):
        spans.append(stop - start)
        return real(path, start, stop)
    monkeypatch.setattr(merge, "npy_rows", counted)
    chunks = list(live.slices(50))
    assert np.array_equal(np.concatenate(chunks), np.concatenate(want)) and len(live) == sum(map(len, picks))
    assert max(map(len, chunks)) <= 50 and max(spans) <= 200
    positions = np.array([0, 7, 120, len(live) - 1])
    assert np.array_equal(live.take(positions, size=33), np.concatenate(want)[positions])


def test_a_compressed_part_must_carry_float_vectors_that_can_hold_its_rows(tmp_path):
    facts = {"sha256": "0" * 64, "mtime_ns": 1}
    meta = {"format": 2, "rows": 1000, "dim": 384, "kind": "ivf-sq8-ip", "created_in": 3,
            "files": {"index.faiss": {**facts, "bytes": 1000 * 384 + 4096},
                      "vectors.npy": {**facts, "bytes": 1000 * 384 * 4 + 128}}}
    parts._check_meta(tmp_path / "part.json", meta)  # codes of one byte a value, floats beside
    without = {**meta, "files": {"index.faiss": meta["files"]["index.faiss"]}}
    short = {**meta, "files": {**meta["files"], "vectors.npy": {**facts, "bytes": 1000 * 384}}}
    flat_with = {**meta, "kind": "ivf-flat-ip",
                 "files": {**meta["files"], "index.faiss": {**facts, "bytes": 1000 * 384 * 4 + 4096}}}
    for bad in (without, short, flat_with):
        with pytest.raises(VerifyFailed, match="float vectors file"):
            parts._check_meta(tmp_path / "part.json", bad)


def test_the_rerank_rows_setting_names_a_stored_precision():
    from shared.settings import SettingsError, load_settings

    assert load_settings({}).rerank_rows == "float16"
    assert load_settings({"SWAPLINE_RERANK_ROWS": "float32"}).rerank_rows == "float32"
    with pytest.raises(SettingsError, match="SWAPLINE_RERANK_ROWS must be one of float16, float32"):
        load_settings({"SWAPLINE_RERANK_ROWS": "float64"})
