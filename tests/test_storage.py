"""The data dir: staging round trip, names that must not escape it, immutable segment writes."""

from __future__ import annotations

import numpy as np
import pytest

from shared.storage import TMP_PREFIX, Storage, UnsafePath

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(tmp_path / "data")


def leftovers(root) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_staging_round_trip(storage):
    docs = [{"id": "a", "text": "# Títle\nbody", "metadata": {"k": [1, 2]}}, {"id": "b", "text": "line\nbreaks"}]
    path = storage.write_staging(JOB, docs)
    assert path == storage.root / "staging" / f"{JOB}.jsonl"
    assert storage.read_staging(JOB) == docs
    assert leftovers(storage.root) == []
    storage.delete_staging(JOB)
    assert not path.exists()
    storage.delete_staging(JOB)  # deleting twice is fine (a redelivered ingest)
    with pytest.raises(FileNotFoundError):
        storage.read_staging(JOB)


def test_staging_rewrite_replaces_whole_file(storage):
    storage.write_staging(JOB, [{"id": str(i)} for i in range(5)])
    storage.write_staging(JOB, [{"id": "only"}])
    assert storage.read_staging(JOB) == [{"id": "only"}]


@pytest.mark.parametrize("name", [
    "..", "../x", "a/../../b", "a/b", "/etc", "/tmp/x", "Docs", "UPPER", "a" * 65, "", ".hidden", "-dash",
    "_under", "a b", "a.b", "docs\n", "dócs",
])
def test_unsafe_collection_names_raise(storage, name):
    for method in (storage.segments_dir, storage.indexes_dir, storage.check_collection):
        with pytest.raises(UnsafePath):
            method(name)
    with pytest.raises(UnsafePath):
        storage.segment_dir(name, 1)
    with pytest.raises(UnsafePath):
        storage.version_dir(name, 1)


@pytest.mark.parametrize("name", ["docs", "a", "0", "k8s-keps_v2", "a" * 64])
def test_safe_collection_names_stay_under_the_root(storage, name):
    assert storage.segments_dir(name) == storage.root / "segments" / name
    assert storage.segment_dir(name, 3) == storage.root / "segments" / name / "0000000003"
    assert storage.version_dir(name, 12) == storage.root / "indexes" / name / "v12"


@pytest.mark.parametrize("job_id", [
    "..", "../" + JOB, JOB + "/..", "/" + JOB, "/etc/passwd", JOB.upper(), JOB[:-1], JOB + "0", "", "g" * 32,
    JOB + "\n",
])
def test_unsafe_job_ids_raise(storage, job_id):
    with pytest.raises(UnsafePath):
        storage.staging_path(job_id)
    with pytest.raises(UnsafePath):
        storage.write_staging(job_id, [{"id": "x"}])
    assert not (storage.root / "staging").exists() or list((storage.root / "staging").iterdir()) == []


@pytest.mark.parametrize("relative", ["../outside", "/etc/passwd", "indexes/../../x"])
def test_relative_paths_from_redis_cannot_escape(storage, relative):
    with pytest.raises(UnsafePath):
        storage.resolve_relative(relative)


def test_relative_round_trip(storage):
    path = storage.version_dir("docs", 3)
    assert storage.relative(path) == "indexes/docs/v3"
    assert storage.resolve_relative("indexes/docs/v3") == path


def segment(n: int, dim: int = 4):
    records = [{"doc_id": f"d{i}", "chunk_id": f"d{i}#0", "text": f"text {i}"} for i in range(n)]
    vectors = np.arange(n * dim, dtype=np.float64).reshape(n, dim)
    return records, vectors


def test_write_segment_round_trip_without_temp_left(storage):
    records, vectors = segment(3)
    path = storage.write_segment("docs", 1, records, vectors, {"docs": ["d0", "d1", "d2"], "model": "hash-4"})
    assert path == storage.segment_dir("docs", 1)
    assert sorted(p.name for p in path.iterdir()) == ["chunks.jsonl", "meta.json", "vectors.npy"]
    assert list(storage.iter_segment_records("docs", 1)) == records
    stored = storage.read_segment_vectors("docs", 1)
    assert stored.dtype == np.float32 and np.array_equal(stored, vectors.astype(np.float32))
    meta = storage.read_segment_meta("docs", 1)
    assert meta == {"docs": ["d0", "d1", "d2"], "model": "hash-4", "seq": 1, "chunks": 3}
    assert leftovers(storage.root) == []


def test_write_segment_refuses_to_overwrite(storage):
    records, vectors = segment(2)
    storage.write_segment("docs", 1, records, vectors, {"docs": ["d0", "d1"]})
    other_records, other_vectors = segment(3)
    with pytest.raises(OSError):
        storage.write_segment("docs", 1, other_records, other_vectors + 100, {"docs": ["x"]})
    assert list(storage.iter_segment_records("docs", 1)) == records  # untouched
    assert storage.read_segment_meta("docs", 1)["docs"] == ["d0", "d1"]
    assert leftovers(storage.root) == []


def test_write_segment_length_mismatch_leaves_nothing(storage):
    records, vectors = segment(3)
    with pytest.raises(ValueError):
        storage.write_segment("docs", 1, records, vectors[:2], {})
    assert leftovers(storage.root) == []
    assert not storage.segment_dir("docs", 1).exists()


def test_write_segment_failure_midway_cleans_its_temp_dir(storage):
    records, vectors = segment(2)
    records[1]["metadata"] = {"not json": {1, 2}}  # json.dumps fails after the temp dir exists
    with pytest.raises(TypeError):
        storage.write_segment("docs", 1, records, vectors, {})
    assert leftovers(storage.root) == []
    assert not storage.segment_dir("docs", 1).exists()
    # The same seq can still be written afterwards.
    good_records, good_vectors = segment(2)
    storage.write_segment("docs", 1, good_records, good_vectors, {})
    assert list(storage.iter_segment_records("docs", 1)) == good_records


def test_remove_stale_temps_and_collection(storage):
    records, vectors = segment(1)
    storage.write_segment("docs", 1, records, vectors, {})
    parent = storage.indexes_dir("docs")
    tmp = storage.temp_dir(parent, "v9")
    (tmp / "index.faiss").write_bytes(b"partial")
    (parent / "v1").mkdir()
    assert storage.remove_stale_temps(parent) == 1
    assert [p.name for p in parent.iterdir()] == ["v1"]
    storage.remove_collection("docs")
    assert not storage.segments_dir("docs").exists() and not parent.exists()
