"""The keyword index over parts (shared/index/keywordpart.py): one part scores as bm25s does, and a
version of several parts with deletions scores exactly as one part over its live rows."""

from __future__ import annotations

import io
import resource
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from shared.index import keywordpart
from shared.index.keyword import KeywordIndex, KeywordVerifyFailed, keyword_text, save
from shared.index.keywordpart import KEYWORD_PART_FILES, KeywordPart, KeywordSearch, write_keyword_part

IDENTIFIERS = ["ErrImagePull", "KEP-1287", "InPlacePodVerticalScaling", "CrashLoopBackOff", "kube_proxy",
               "v1.27", "PodDisruptionBudget", "etcd"]


def vocabulary(rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(192)}
    return sorted(words) + IDENTIFIERS + ["the", "and"]  # two stop words, which no index sees


def corpus(n: int, seed: int = 7) -> tuple[list[str], list[dict]]:
    """(vocabulary, records) with Zipf-like word use, so terms range from rare to everywhere; every
    twentieth record has no text and no id, so no token at all."""
    rng = np.random.default_rng(seed)
    words = vocabulary(rng)
    weights = 1 / np.arange(1, len(words) + 1)
    weights = rng.permutation(weights / weights.sum())
    records = []
    for i in range(n):
        if i % 20 == 19:
            records.append({"doc_id": "", "text": "", "heading_path": []})
            continue
        text = " ".join(rng.choice(words, size=rng.integers(1, 40), p=weights))
        records.append({"doc_id": f"docs/{i % 37}.md", "text": text, "heading_path": ["Guide", words[i % 50]]})
    return words, records


def queries(words: list[str], count: int = 30, seed: int = 11) -> list[str]:
    rng = np.random.default_rng(seed)
    found = [" ".join(rng.choice(words, size=rng.integers(1, 5))) for _ in range(count - 3)]
    # A token repeated counts twice in bm25s; an unknown one not at all.
    return found + [f"{words[3]} {words[3]} {words[9]}", "ErrImagePull KEP-1287 kep", f"zzzunknown {words[5]}"]


def part_at(directory: Path, records: list[dict]) -> KeywordPart:
    directory.mkdir(parents=True, exist_ok=True)
    entry = write_keyword_part(directory, (keyword_text(r) for r in records))
    assert entry["rows"] == len(records) and entry["files"] == list(KEYWORD_PART_FILES)
    return KeywordPart(directory, entry["rows"])


def test_one_part_scores_and_ranks_as_bm25s(tmp_path):
    words, records = corpus(400)
    save(tmp_path / "bm25s", records)
    reference = KeywordIndex(tmp_path / "bm25s", len(records))
    search = KeywordSearch([(part_at(tmp_path / "part", records), 0, None)], len(records))
    for query in queries(words):
        expected = reference.scores(query)
        assert expected.any() or query.startswith("zzz")
        np.testing.assert_allclose(search.scores(query), expected, rtol=1e-5, atol=0, err_msg=query)
        ours, theirs = search.top(query, 10), reference.top(query, 10)
        assert [row for row, _ in ours] == [row for row, _ in theirs], query
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], rtol=1e-5)


def test_parts_with_deletions_score_exactly_as_one_part_over_the_live_rows(tmp_path):
    words, records = corpus(300, seed=3)
    rng = np.random.default_rng(5)
    bounds = [(0, 100), (100, 220), (220, 300)]
    masks = [rng.random(100) < 0.2, None, rng.random(80) < 0.3]
    parts = [(part_at(tmp_path / f"p{i}", records[start:stop]), start, mask)
             for i, ((start, stop), mask) in enumerate(zip(bounds, masks, strict=True))]
    deleted = np.concatenate([np.zeros(stop - start, bool) if m is None else m
                              for (start, stop), m in zip(bounds, masks, strict=True)])
    live = np.flatnonzero(~deleted)
    search = KeywordSearch(parts, len(records))
    reference = KeywordSearch([(part_at(tmp_path / "ref", [records[i] for i in live]), 0, None)], len(live))
    assert search.live_rows == reference.live_rows == len(live) and search.avgdl == reference.avgdl
    for query in queries(words):
        scores, expected = search.scores(query), reference.scores(query)
        np.testing.assert_allclose(scores[live], expected, rtol=0, atol=1e-6, err_msg=query)
        assert not scores[deleted].any()
        mapped = [(int(np.searchsorted(live, row)), score) for row, score in search.top(query, 10)]
        assert mapped == reference.top(query, 10), query


def test_allowed_mask_limits_the_candidates(tmp_path):
    words, records = corpus(200)
    search = KeywordSearch([(part_at(tmp_path, records), 0, None)], len(records))
    allowed = np.random.default_rng(2).random(len(records)) < 0.3
    query = " ".join(words[:6])
    scores = search.scores(query)
    hits = search.top(query, 500, allowed)
    assert hits and all(allowed[row] for row, _ in hits)
    assert len(hits) == int(np.count_nonzero(allowed & (scores > 0)))
    assert hits[:5] == [(row, score) for row, score in search.top(query, 500) if allowed[row]][:5]


def test_empty_part_and_empty_collection(tmp_path):
    entry = write_keyword_part(tmp_path, [])
    assert (entry["rows"], entry["terms"]) == (0, 0)
    empty = KeywordSearch([(KeywordPart(tmp_path, 0), 0, None)], 0)
    empty.warm()
    assert empty.top("ErrImagePull", 10) == [] and empty.scores("ErrImagePull").shape == (0,)
    assert KeywordSearch([], 0).top("ErrImagePull", 10) == []


def test_unknown_and_stop_word_queries_find_nothing(tmp_path):
    _, records = corpus(50)
    search = KeywordSearch([(part_at(tmp_path, records), 0, None)], len(records))
    search.warm()
    assert search.top("zzzunknown qqqnothing", 10) == []
    assert search.top("the and", 10) == []
    assert search.top("", 10) == []


def test_all_rows_deleted_find_nothing(tmp_path):
    words, records = corpus(40)
    part = part_at(tmp_path, records)
    search = KeywordSearch([(part, 0, np.ones(40, bool))], 40)
    assert search.live_rows == 0 and search.top(" ".join(words), 10) == []


def rewrite(path: Path, array: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    """Write `array` to `path`, its header claiming `shape` when given (a forged header)."""
    out = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(array)
    if shape is not None:
        header["shape"] = shape
    np.lib.format.write_array_header_1_0(out, header)
    path.write_bytes(out.getvalue() + array.tobytes())


def test_forged_header_is_refused_before_allocation(tmp_path):
    _, records = corpus(30)
    part_at(tmp_path, records)
    rows = np.load(tmp_path / "kw_rows.npy")
    rewrite(tmp_path / "kw_rows.npy", rows, shape=(1_000_000_000,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(KeywordVerifyFailed, match="does not match its"):
        KeywordPart(tmp_path, 30)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100
    (tmp_path / "kw_tf.npy").write_bytes(b"not numpy at all")
    rewrite(tmp_path / "kw_rows.npy", rows)
    with pytest.raises(KeywordVerifyFailed, match="not a .npy file"):
        KeywordPart(tmp_path, 30)


@pytest.mark.parametrize("damage", ["extra row length", "wrong row count", "short postings", "wrong dtype",
                                    "two dimensions"])
def test_inconsistent_shapes_are_refused(tmp_path, damage):
    _, records = corpus(30)
    part_at(tmp_path, records)
    rows = 30
    tf = np.load(tmp_path / "kw_tf.npy")
    if damage == "extra row length":
        np.save(tmp_path / "kw_doclen.npy", np.zeros(31, np.uint32))
    elif damage == "wrong row count":
        rows = 29
    elif damage == "short postings":
        np.save(tmp_path / "kw_tf.npy", tf[:-1])
    elif damage == "wrong dtype":
        np.save(tmp_path / "kw_tf.npy", tf.astype(np.float64))
    else:
        np.save(tmp_path / "kw_tf.npy", tf.reshape(1, -1))
    with pytest.raises(KeywordVerifyFailed):
        KeywordPart(tmp_path, rows)


def test_verify_reads_the_postings(tmp_path):
    _, records = corpus(30)
    part_at(tmp_path, records).verify()
    rows = np.load(tmp_path / "kw_rows.npy")
    rows[-1] = 30  # past the part's last row
    np.save(tmp_path / "kw_rows.npy", rows)
    with pytest.raises(KeywordVerifyFailed, match="never has"):
        KeywordPart(tmp_path, 30).verify()


def test_a_mask_or_offset_that_does_not_fit_is_refused(tmp_path):
    _, records = corpus(30)
    part = part_at(tmp_path, records)
    with pytest.raises(ValueError, match="does not fit"):
        KeywordSearch([(part, 10, None)], 30)
    with pytest.raises(ValueError, match="deletion mask"):
        KeywordSearch([(part, 0, np.zeros(29, bool))], 30)


def _files(directory: Path) -> list[np.ndarray]:
    return [np.load(directory / name) for name in KEYWORD_PART_FILES]


def test_a_part_built_in_slices_equals_one_built_at_once(tmp_path, monkeypatch):
    _, records = corpus(400)
    texts = [keyword_text(r) for r in records]
    whole = write_keyword_part(_fresh(tmp_path / "whole"), texts)
    ranges = []
    merged = keywordpart._merged

    def counted(slices):
        for out in merged(slices):
            ranges.append(len(out[0]))
            yield out

    monkeypatch.setattr(keywordpart, "_merged", counted)
    monkeypatch.setattr(keywordpart, "MERGE_PAIRS", 256)
    monkeypatch.setattr(keywordpart, "_SAMPLE_EVERY", 16)
    sliced = write_keyword_part(_fresh(tmp_path / "sliced"), texts, slice_tokens=97)
    assert len(ranges) > 4 and sum(ranges) == whole["terms"] == sliced["terms"]  # many slices, many ranges
    for mine, theirs in zip(_files(tmp_path / "sliced"), _files(tmp_path / "whole"), strict=True):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    assert sorted(p.name for p in (tmp_path / "sliced").iterdir()) == sorted(KEYWORD_PART_FILES)  # no spill left


def test_a_part_builds_in_memory_that_follows_the_slice_not_the_part(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(words, size=60)) for _ in range(5_000)]  # 300,000 tokens

    def peak(directory: Path, **kwargs) -> int:
        tracemalloc.start()
        write_keyword_part(_fresh(directory), texts, **kwargs)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    monkeypatch.setattr(keywordpart, "MERGE_PAIRS", 1 << 14)
    monkeypatch.setattr(keywordpart, "_SAMPLE_EVERY", 256)
    at_once = peak(tmp_path / "whole", slice_tokens=1 << 30)
    sliced = peak(tmp_path / "sliced", slice_tokens=1 << 13)
    assert sliced < at_once / 4, (sliced, at_once)
    assert all(np.array_equal(a, b) for a, b in zip(_files(tmp_path / "whole"), _files(tmp_path / "sliced"),
                                                       strict=True))


def _fresh(directory: Path) -> Path:
    directory.mkdir(parents=True)
    return directory
