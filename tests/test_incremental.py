"""Incremental rebuilds, IVF quantizer reuse, nprobe tuning and the recall floor.

The IVF helpers are tested on numpy vectors; the rebuilds run the real domain code (run_rebuild) on the
session's redis-server with the hashing embedder, and one refused build goes through a real worker."""

from __future__ import annotations

import hashlib

import faiss
import numpy as np
import pytest
import requests

from shared.errors import RecallBelowFloor
from shared.index import ivf
from shared.index.parts import PartsVersion, open_version, verify_version
from shared.index.vectorindex import MANIFEST_FILE, ivf_on, read_manifest, train_ivf, training_rows
from shared.jobs.compact import request_compaction, run_compact
from shared.jobs.deletion import run_delete
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import request_rebuild, submit_delete, submit_documents
from shared.jobstates import SUCCEEDED
from shared.search.engine import search
from shared.search.filters import parse_filter
from shared.settings import Settings
from shared.storage import TMP_PREFIX
from tests.support import make_services
from tests.test_vectorindex import clustered


def _filled(quantizer: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    index = ivf_on(quantizer)
    _, lists = ivf.assign(quantizer, vectors)
    ivf.add_assigned(index, vectors, lists, 700, lambda done: None)
    return index


def test_exact_search_over_ivf_lists_equals_flat_search():
    vectors = clustered(2000)
    trained = train_ivf(vectors)
    index = _filled(trained.quantizer, vectors)
    flat = faiss.IndexFlatIP(64)
    flat.add(vectors)
    queries = clustered(30, seed=11)
    got_scores, got_ids = ivf.exact_search(index, queries, 10)
    want_scores, want_ids = flat.search(queries, 10)
    assert (got_ids == want_ids).all() and np.allclose(got_scores, want_scores, atol=1e-5)


def test_tuning_holds_the_mean_recall_two_standard_errors_above_the_target():
    per_query = np.array([1.0, 0.9] * 100)  # mean 0.95, sample standard deviation 0.05013
    assert ivf.recall_bound(per_query) == pytest.approx(0.95 - 2 * per_query.std(ddof=1) / np.sqrt(200))
    assert 0.942 < ivf.recall_bound(per_query) < 0.944
    assert ivf.recall_bound(np.ones(200)) == 1.0  # every query found everything: a target of 1.0 is met
    assert ivf.recall_bound(np.array([0.7])) == pytest.approx(0.7) and ivf.recall_bound(np.array([])) == 1.0


def test_nprobe_is_the_smallest_on_the_ladder_that_reaches_the_target(monkeypatch):
    vectors = clustered(4000)
    trained = train_ivf(vectors)
    index = _filled(trained.quantizer, vectors)
    tuned = ivf.tune_nprobe(index, 0.95, 256)
    assert tuned["recall_at_10"] >= 0.95 and tuned["query_kind"].startswith("query-like probes")
    assert faiss.extract_index_ivf(index).nprobe == tuned["nprobe"] == tuned["ladder"][-1][0]
    assert [n for n, _ in tuned["ladder"]] == [1 << i for i in range(len(tuned["ladder"]))]
    # Held to the bare mean, every rung before the one taken falls short; the margin never takes less.
    monkeypatch.setattr(ivf, "TUNE_MARGIN_SE", 0.0)
    bare = ivf.tune_nprobe(index, 0.95, 256)
    assert all(recall < 0.95 for _, recall in bare["ladder"][:-1]) and bare["recall_at_10"] >= 0.95
    assert bare["nprobe"] <= tuned["nprobe"]
    # Every list probed is exact search; queries the caller holds out are used as given.
    everything = ivf.tune_nprobe(index, 1.01, 10_000, queries=clustered(50, seed=12))
    assert everything["ladder"][-1] == [index.nlist, 1.0] and everything["query_kind"] == "given"
    assert ivf.nprobe_ladder(48, 256) == [1, 2, 4, 8, 16, 32, 48]


def _cluster_sample(n: int, centres_seed: int, seed: int, dim: int = 64, clusters: int = 40) -> np.ndarray:
    centres = np.random.default_rng(centres_seed).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    v = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_quantizer_is_retrained_on_drift_growth_or_imbalance_only():
    vectors = _cluster_sample(4000, centres_seed=3, seed=4)
    trained = train_ivf(vectors)
    top, lists = ivf.assign(trained.quantizer, vectors)
    record = ivf.training_record(top, lists, training_rows(4000, trained.nlist), trained.nlist, version=1)
    sizes = np.bincount(lists, minlength=trained.nlist)
    same = _cluster_sample(600, centres_seed=3, seed=21)  # new rows from the same clusters
    top_same, lists_same = ivf.assign(trained.quantizer, same)
    fine = ivf.after_assigning(record, top_same)
    assert fine["assigned_since"] == 600 and fine["far_since"] < 0.08 * 600
    assert ivf.retrain_reason(fine, 4600, sizes + np.bincount(lists_same, minlength=trained.nlist)) is None
    elsewhere = _cluster_sample(600, centres_seed=77, seed=22)  # rows around other centres
    top_far, lists_far = ivf.assign(trained.quantizer, elsewhere)
    drifted = ivf.after_assigning(record, top_far)
    assert ivf.retrain_reason(drifted, 4600, sizes).startswith("drift")
    assert ivf.retrain_reason(ivf.after_assigning(record, top_far[:150]), 4150, sizes) is None  # too few to judge
    assert ivf.retrain_reason(record, 9000, sizes).startswith("size")
    lopsided = sizes.copy()
    lopsided[0] += 8000
    assert ivf.retrain_reason(record, 4000, lopsided).startswith("imbalance")


def test_query_like_probes_track_held_out_queries_where_indexed_rows_do_not():
    """The build's default queries (query-like probes from sampled rows) estimate what held-out queries
    get at every nprobe, on data shaped like all-MiniLM-L6-v2's with queries as far from their chunks as
    real ones (shared/index/realistic.py); the indexed rows themselves, searched leave-one-out, would
    promise far more than such queries get."""
    from shared.index.realistic import QUERY_COSINES, RealisticVectors

    source = RealisticVectors()
    n = 30_000
    vectors = source.vectors(0, n)
    trained = train_ivf(vectors)
    index = _filled(trained.quantizer, vectors)
    probes = ivf.tune_nprobe(index, 1.01, 64)
    queries, _ = source.queries(np.arange(300), n, QUERY_COSINES)
    held_out = ivf.tune_nprobe(index, 1.01, 64, queries=queries)
    for (nprobe, estimate), (same, measured) in zip(probes["ladder"], held_out["ladder"], strict=True):
        assert nprobe == same and abs(estimate - measured) < 0.08, (probes["ladder"], held_out["ladder"])
    own, rows = ivf.sample_rows(index, 200, seed=5)
    truth = ivf.exact_search(index, rows, 11)[1][:, 1:]  # each row's own hit left out
    _, found = index.search(rows, 11, params=faiss.SearchParametersIVF(nprobe=4))  # type: ignore[call-arg]
    rows_recall = np.mean([len(set(f[f != me]) & set(t)) / 10 for f, t, me in zip(found, truth, own, strict=True)])
    assert rows_recall > dict(held_out["ladder"])[4] + 0.2, (rows_recall, held_out["ladder"])


# Rebuilds through the domain code.

WORDS = [f"w{n}" for n in range(300)]


def _docs(ids, variant: str = "") -> list[dict]:
    """Documents whose texts share a few words and differ in others (six words drawn by their id), so
    vector and keyword scores rarely tie and a comparison of two versions' hits is exact."""
    def words(i: str) -> str:
        seed = int(hashlib.sha256(f"{i}{variant}".encode()).hexdigest()[:8], 16)
        return " ".join(WORDS[(seed >> (5 * n)) % len(WORDS)] for n in range(6))
    return [{"id": i, "text": f"# Area {sum(map(ord, i)) % 17}\nNote {i}{variant} covers subject{len(i) * 7 % 101} and "
                              f"detail {i} {variant}. {words(i)}", "metadata": {"source": "x" if len(i) % 2 else "y"}}
            for i in ids]


class Collection:
    def __init__(self, redis_url, rclient, tmp_path, **overrides):
        self.settings = Settings(embedder="hash", data_dir=tmp_path, redis_url=redis_url, build_step=64,
                                 **overrides)
        self.rclient = rclient
        self.svc = self.services(self.settings)
        self.svc.collections.create("docs")

    def services(self, settings):
        return make_services(settings, self.rclient)

    def ingest(self, docs):
        job = submit_documents(self.svc, "docs", docs, rebuild=False)
        run_ingest(self.svc, job["id"])
        assert self.svc.jobs.state(job["id"]) == SUCCEEDED

    def delete(self, ids):
        job = submit_delete(self.svc, "docs", ids)
        run_delete(self.svc, job["id"])

    def embed(self, text: str) -> np.ndarray:
        return self.svc.embedder.embed([text])[0]

    def rebuild(self, **overrides) -> dict:
        svc = self.services(self.settings.with_(**overrides)) if overrides else self.svc
        job, _ = request_rebuild(svc, "docs", exclusive=False)
        run_rebuild(svc, job["id"])
        done = svc.jobs.get(job["id"])
        assert done["state"] == SUCCEEDED, done
        return done["result"]

    def loaded(self, version: int) -> PartsVersion:
        loaded = open_version(self.svc.storage.version_dir("docs", version), version)
        assert isinstance(loaded, PartsVersion)
        return loaded

    def files(self, version: int) -> dict[str, str]:
        """Every file a version uses (its own and its parts'), by path under the collection's indexes."""
        indexes = self.svc.storage.indexes_dir("docs")
        manifest = read_manifest(indexes / f"v{version}")
        folders = [indexes / f"v{version}", *(indexes / "parts" / p["name"] for p in manifest["parts"])]
        return {str(p.relative_to(indexes)): hashlib.sha256(p.read_bytes()).hexdigest()
                for folder in folders for p in folder.rglob("*") if p.is_file()}


FILTERS = [None, {"metadata.source": "x"}, {"path_prefix": "d1"}, {"type": "none"}]


def _hits(version: PartsVersion, query: str, mode: str, spec, embed, k: int = 10) -> list[tuple[str, float]]:
    hits = search(version, query, k, mode, parse_filter(spec), embed).hits
    return [(h["chunk_id"], round(h["score"], 5)) for h in hits]


def _same_up_to_boundary_ties(got: list, want: list) -> None:
    """The same hits in the same order, but for which of the rows tied at the k-th score made the cut
    (the hashing embedder ties often; FAISS's choice among tied rows follows rounding noise)."""
    assert [s for _, s in got] == [s for _, s in want]
    boundary = got[-1][1] if got else None
    assert [h for h in got if h[1] != boundary] == [h for h in want if h[1] != boundary]


def _same_answers(a: PartsVersion, b: PartsVersion, queries: list[str], embed) -> None:
    """Two versions answer alike: the same documents and chunk records, and the same hits (chunk, score)
    in every mode, with and without filters. Row numbers may differ: one may keep deleted rows."""
    assert a.vectors == b.vectors and len(a.documents) == len(b.documents)
    docs_a, docs_b = a.documents.page("", None, 100_000)[0], b.documents.page("", None, 100_000)[0]
    assert [d["id"] for d in docs_a] == [d["id"] for d in docs_b]
    for da, db in zip(docs_a, docs_b, strict=True):
        assert a.records(da["rows"]) == b.records(db["rows"])
        assert {k: v for k, v in da.items() if k != "rows"} == {k: v for k, v in db.items() if k != "rows"}
    b.nprobe = a.nprobe  # a full build tunes nprobe afresh; the answers compare at one setting
    fused = 0
    for query in queries:
        for spec in FILTERS:
            got, want = (search(v, query, 10, "vector", parse_filter(spec), embed) for v in (a, b))
            assert (got.scanned, got.matched_documents) == (want.scanned, want.matched_documents)
            depth = {}
            for mode in ("vector", "keyword"):
                _same_up_to_boundary_ties(_hits(a, query, mode, spec, embed), _hits(b, query, mode, spec, embed))
                depth[mode] = (_hits(a, query, mode, spec, embed, 20), _hits(b, query, mode, spec, embed, 20))
            # Hybrid fuses the ranks of the two lists at depth 20: where those agree, it must too.
            if all(x == y for x, y in depth.values()):
                assert _hits(a, query, "hybrid", spec, embed) == _hits(b, query, "hybrid", spec, embed)
                fused += 1
    assert fused >= len(queries)  # ties at depth 20 skip a few comparisons, never most


@pytest.mark.integration
@pytest.mark.parametrize("approx_threshold", [200_000, 300], ids=["flat", "ivf"])
def test_incremental_build_answers_like_a_full_build(redis_url, rclient, tmp_path, approx_threshold):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=approx_threshold)
    col.ingest(_docs([f"d{i}" for i in range(400)]))
    first = col.rebuild()
    assert first["incremental"] is False and first["full_reason"] == "no published version"
    v1_files = col.files(first["version"])

    col.ingest(_docs([f"n{i}" for i in range(20)]) + _docs([f"d{i}" for i in range(1, 6)], "edited"))
    col.ingest(_docs(["d1", "n0"], "again"))  # documents written twice among the new segments
    col.delete([*(f"d{i}" for i in range(10, 15)), "n3"])
    col.delete([])  # a segment with nothing in it
    col.ingest(_docs(["d12"], "back"))  # deleted, then written again
    second = col.rebuild()
    assert second["incremental"] is True and second["built_from"] == first["version"]
    assert (second["reused_rows"], second["removed_rows"], second["added_rows"]) == (390, 10, 25)
    assert second["vectors"] == 415 and second["documents"] == 415
    assert col.files(first["version"]) == v1_files  # the published version was referenced, never changed
    verify_version(col.svc.storage.version_dir("docs", first["version"]))
    # The new version wrote one part (the new rows) and keeps the first one, with 10 of its rows deleted.
    incremental_version = col.loaded(second["version"])
    parts = incremental_version.manifest["parts"]
    assert [(p["name"], p["rows"], p["deleted"]) for p in parts] == [
        (f"p{first['version']}", 400, 10), (f"p{second['version']}", 25, 0)]
    first_parts = {name for name in col.files(first["version"]) if name.startswith("parts/")}
    assert first_parts < set(col.files(second["version"]))

    full = col.rebuild(incremental_builds=False)
    assert full["incremental"] is False
    full_version = col.loaded(full["version"])
    queries = [d["text"] for d in _docs(["d1", "d12", "n0", "n7", "d300", "zz"], "again")] + ["subject14 detail"]
    _same_answers(incremental_version, full_version, queries, col.embed)
    if approx_threshold == 300:
        assert second["kind"] == full["kind"] == "ivf-flat-ip"
        assert second["quantizer"] == full["quantizer"] == {"reused": True, "trained_in": first["version"]}


@pytest.mark.integration
@pytest.mark.parametrize("approx_threshold", [200_000, 300], ids=["flat", "ivf"])
def test_many_small_rebuilds_fold_parts_and_still_answer_like_a_full_build(redis_url, rclient, tmp_path,
                                                                         approx_threshold):
    """Edits one at a time: each rebuild writes a small part; the tail parts fold into the new one, so a
    version never has more than MAX_PARTS parts, and the answers stay those of a full build."""
    from shared.jobs.build import MAX_PARTS

    col = Collection(redis_url, rclient, tmp_path, approx_threshold=approx_threshold)
    col.ingest(_docs([f"d{i}" for i in range(400)]))
    col.rebuild()
    folded, counts = 0, []
    for round_ in range(14):
        col.ingest(_docs([f"d{round_ * 7 % 400}", f"r{round_}"], f"round{round_}"))
        if round_ % 4 == 3:
            col.delete([f"d{round_ + 100}"])
        result = col.rebuild()
        assert result["incremental"] is True, result
        folded += result["parts_folded"]
        counts.append(len(col.loaded(result["version"]).manifest["parts"]))
    assert folded and max(counts) <= MAX_PARTS
    last = col.loaded(result["version"])
    full = col.loaded(col.rebuild(incremental_builds=False)["version"])
    _same_answers(last, full, ["Note d7round1 covers", "detail r3", "subject14", "Area 3 d105"], col.embed)


@pytest.mark.integration
def test_tuned_nprobe_and_build_facts_land_in_the_manifest(redis_url, rclient, tmp_path):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=300)
    col.ingest(_docs([f"d{i}" for i in range(400)]))
    result = col.rebuild()
    manifest = read_manifest(col.svc.storage.version_dir("docs", result["version"]))
    assert manifest["kind"] == "ivf-flat-ip" and manifest["recall_target"] == 0.95
    assert manifest["recall_at_10"] == result["recall_at_10"] >= 0.95
    assert manifest["nprobe"] == result["nprobe"] == manifest["ladder"][-1][0]
    assert manifest["ivf_training"]["rows"] == 400 and manifest["ivf_training"]["trained_in"] == result["version"]
    assert manifest["quantizer"] == {"reused": False, "trained_in": result["version"], "retrain_reason": None}
    assert manifest["tuned_rows"] == 400 and manifest["tuned_in"] == result["version"]
    assert col.loaded(result["version"]).nprobe == manifest["nprobe"]
    col.ingest(_docs([f"n{i}" for i in range(30)]))
    carried = col.rebuild()  # 430 rows: within NPROBE_ROWS of 400, the tuning is kept
    assert carried["incremental"] is True and "measure" not in carried["timings"]
    assert read_manifest(col.svc.storage.version_dir("docs", carried["version"]))["tuned_in"] == result["version"]
    col.ingest(_docs([f"m{i}" for i in range(200)]))
    retuned = col.rebuild()  # 630 rows: past 1.25 x 400, tuned again by a full build
    assert retuned["incremental"] is False and retuned["full_reason"].startswith("nprobe re-tuned")
    assert "measure" in retuned["timings"]


@pytest.mark.integration
@pytest.mark.parametrize("approx_threshold", [200_000, 300], ids=["flat", "ivf"])
def test_compaction_in_between_falls_back_to_a_full_build(redis_url, rclient, tmp_path, approx_threshold):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=approx_threshold)
    col.ingest(_docs([f"d{i}" for i in range(300)]))
    col.ingest(_docs([f"e{i}" for i in range(100)]))
    first = col.rebuild()
    col.ingest(_docs([f"d{i}" for i in range(50)], "edited"))
    job = request_compaction(col.svc, "docs")
    run_compact(col.svc, job["id"])
    assert col.svc.jobs.state(job["id"]) == SUCCEEDED and len(col.svc.collections.segments("docs")) == 1
    col.ingest(_docs(["f1"]))
    after = col.rebuild()
    assert after["incremental"] is False and "compacted" in after["full_reason"]
    assert after["vectors"] == 401
    if approx_threshold == 300:  # a full build still reuses the trained quantizer
        assert after["quantizer"] == {"reused": True, "trained_in": first["version"]}
    again = col.rebuild()  # and the next build is incremental again, from the compacted list
    assert again["incremental"] is True and again["built_from"] == after["version"]
    _same_answers(col.loaded(after["version"]), col.loaded(again["version"]), ["Note d3edited covers", "detail f1"],
                  col.embed)


@pytest.mark.integration
def test_a_compaction_streams_the_live_rows_into_one_segment_unchanged(redis_url, rclient, tmp_path, monkeypatch):
    """Compaction reads the records and vectors again slice by slice (as a full build does): the one
    segment it writes holds exactly the live rows, in order, whatever the slice size, and the registry
    points every live document (one without chunks too) at it and forgets the deleted one."""
    from shared.jobs import compact

    col = Collection(redis_url, rclient, tmp_path)
    col.ingest(_docs([f"d{i}" for i in range(40)]))
    col.ingest(_docs([f"e{i}" for i in range(25)]) + [{"id": "empty", "text": ""}])
    col.ingest(_docs([f"d{i}" for i in range(0, 40, 3)], "edited"))  # supersedes 14 of the first 40
    col.delete(["e3"])
    storage, before = col.svc.storage, col.svc.collections.segments("docs")
    # What the live rows are, read straight from the segment files: the last segment naming a document
    # holds it, unless a later one tombstones it.
    owner: dict[str, int | None] = {}
    for seq in before:
        meta = storage.read_segment_meta("docs", seq)
        owner.update({doc: None for doc in meta.get("tombstones", [])})
        owner.update({doc: seq for doc in meta.get("docs", [])})
    expected, vectors = [], []
    for seq in before:
        written = storage.read_segment_meta("docs", seq)["created_at"]
        rows = np.asarray(storage.read_segment_vectors("docs", seq))
        for row, rec in enumerate(storage.iter_segment_records("docs", seq)):
            if owner.get(rec["doc_id"]) == seq:
                expected.append({**rec, "updated_at": rec.get("updated_at", written)})
                vectors.append(rows[row])
    assert len(expected) == 40 + 24 and "empty" in owner and owner["e3"] is None

    monkeypatch.setattr(compact, "SLICE_ROWS", 7)
    job = request_compaction(col.svc, "docs")
    run_compact(col.svc, job["id"])
    assert col.svc.jobs.state(job["id"]) == SUCCEEDED
    [seq] = col.svc.collections.segments("docs")
    assert list(storage.iter_segment_records("docs", seq)) == expected
    assert np.array_equal(np.asarray(storage.read_segment_vectors("docs", seq)), np.stack(vectors))
    meta = storage.read_segment_meta("docs", seq)
    live = sorted(doc for doc, where in owner.items() if where is not None)
    assert meta["chunks"] == len(expected) and sorted(meta["docs"]) == live and meta["tombstones"] == []
    assert col.svc.collections.doc_locations("docs", [*live, "e3"]) == dict.fromkeys(live, seq)


@pytest.mark.integration
@pytest.mark.parametrize("approx_threshold", [200_000, 300], ids=["flat", "ivf"])
def test_a_compaction_of_exactly_the_published_segments_keeps_the_next_build_incremental(
        redis_url, rclient, tmp_path, approx_threshold):
    """A rebuild that publishes asks for a compaction at once; when that compaction folded exactly the
    version's segments, its one segment holds the version's rows, so the next build still only adds."""
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=approx_threshold)
    col.ingest(_docs([f"d{i}" for i in range(300)]))
    col.ingest(_docs([f"e{i}" for i in range(100)]))
    first = col.rebuild()
    job = request_compaction(col.svc, "docs")
    run_compact(col.svc, job["id"])
    assert col.svc.jobs.state(job["id"]) == SUCCEEDED and len(col.svc.collections.segments("docs")) == 1
    col.ingest(_docs(["f1", "f2"]) + _docs(["d7"], "edited"))
    col.delete(["e5"])
    after = col.rebuild()
    assert after["incremental"] is True and after["built_from"] == first["version"]
    assert (after["reused_rows"], after["removed_rows"], after["added_rows"]) == (398, 2, 3)
    full = col.rebuild(incremental_builds=False)
    _same_answers(col.loaded(after["version"]), col.loaded(full["version"]),
                  ["Note d7edited covers", "detail f1", "detail e5"], col.embed)


@pytest.mark.integration
def test_a_build_below_the_recall_floor_is_refused_and_the_pointer_stays(redis_url, rclient, tmp_path):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=300)
    col.ingest(_docs([f"d{i}" for i in range(400)]))
    first = col.rebuild()
    col.ingest(_docs([f"n{i}" for i in range(30)]))
    strict = col.services(col.settings.with_(recall_floor=1.01))
    job, _ = request_rebuild(strict, "docs", exclusive=False)
    with pytest.raises(RecallBelowFloor, match=r"recall@10 .* below the floor 1.01"):
        run_rebuild(strict, job["id"])
    assert strict.pointers.get("docs")["version"] == first["version"]
    indexes = col.svc.storage.indexes_dir("docs")
    assert sorted(p.name for p in indexes.iterdir()) == ["parts", f"v{first['version']}"]
    assert [p.name for p in (indexes / "parts").iterdir()] == [f"p{first['version']}"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in col.svc.storage.root.rglob("*"))
    assert (indexes / f"v{first['version']}" / MANIFEST_FILE).is_file()


@pytest.mark.integration
def test_a_refused_build_fails_its_job_through_a_worker(settings, procs):
    """Through the rebuild task on a real worker: the job fails with the measured recall in its error,
    and the collection still serves the version it had."""
    from tests.support import create_collection, ingest, ingest_and_rebuild, wait_job

    base = procs.api(settings)
    worker = procs.worker(settings.with_(approx_threshold=300))
    create_collection(base, "docs")
    first = ingest_and_rebuild(base, _docs([f"d{i}" for i in range(400)]))[1]["result"]
    assert first["kind"] == "ivf-flat-ip" and first["recall_at_10"] >= 0.95
    worker.stop()
    procs.worker(settings.with_(approx_threshold=300, recall_floor=1.01), name="strict")
    job = wait_job(base, ingest(base, _docs([f"n{i}" for i in range(30)]))["id"])
    refused = wait_job(base, job["result"]["rebuild_job_id"])
    assert refused["state"] == "failed" and "below the floor 1.01" in refused["error"], refused
    assert "recall@10" in refused["error"] and not refused.get("retryable")
    status = requests.get(f"{base}/v1/collections/docs", timeout=10).json()
    assert status["index"]["version"] == first["version"] and status["index"]["vectors"] == 400


@pytest.mark.integration
def test_a_quantizer_to_retrain_turns_the_build_into_a_full_one_that_trains(redis_url, rclient, tmp_path,
                                                                           monkeypatch):
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=300)
    col.ingest(_docs([f"d{i}" for i in range(400)]))
    first = col.rebuild()
    col.ingest(_docs([f"n{i}" for i in range(30)]))
    monkeypatch.setattr(ivf, "retrain_reason", lambda training, rows, sizes: "drift: as the test says")
    second = col.rebuild()
    assert second["incremental"] is False and second["full_reason"] == "quantizer retrained: drift: as the test says"
    assert second["quantizer"] == {"reused": False, "trained_in": second["version"],
                                   "retrain_reason": "quantizer retrained: drift: as the test says"}
    assert second["vectors"] == 430 and first["version"] < second["version"]


@pytest.mark.integration
def test_a_runtime_switch_keeps_rebuilds_incremental_and_compaction_going(redis_url, rclient, tmp_path):
    """A calibration switches a worker between runtimes of one model (one vector space): the next
    rebuild adds the new rows to the published index instead of rebuilding it, and the segments of both
    runtimes compact into one."""
    col = Collection(redis_url, rclient, tmp_path, approx_threshold=200_000)
    col.ingest(_docs([f"d{i}" for i in range(40)]))
    first = col.rebuild()
    col.svc.embedder.model_id += "+another-runtime"  # the same vectors, named as another runtime's
    col.ingest(_docs([f"n{i}" for i in range(5)]))
    second = col.rebuild()
    assert second["incremental"] is True and second["built_from"] == first["version"], second
    compaction = request_compaction(col.svc, "docs")
    assert compaction is not None
    run_compact(col.svc, compaction["id"])
    done = col.svc.jobs.get(compaction["id"])
    assert done["state"] == SUCCEEDED and "skipped" not in done["result"], done


def test_a_version_tuned_on_indexed_rows_is_tuned_again():
    """Versions tuned before query-like probes (on held-out rows, which flatter IVF) get a full build
    that tunes again, instead of carrying their nprobe on through incremental builds."""
    from shared.jobs.build import _tuning_stale

    settings = Settings(embedder="hash")
    tuned = {"tuned_rows": 1000, "recall_target": settings.recall_target, "recall_at_10": 0.97,
             "query_kind": ivf.PROBE_KIND}
    assert _tuning_stale(tuned, 1000, settings) is None
    assert _tuning_stale({**tuned, "query_kind": "given"}, 1000, settings) is None
    old = _tuning_stale({**tuned, "query_kind": "held-out rows (leave-one-out)"}, 1000, settings)
    assert old is not None and old.startswith("nprobe re-tuned") and "query-like probes" in old
