"""Retrieval metrics over ranked hits, for canaries and `swapline eval`: pure functions, no index.

A query's relevant set is a list of `expect` entries, each a document id or a path prefix ending in
`/`: a hit matches an entry when its doc_id equals it, or, for a prefix, starts with it (so
`notes/1` never matches `notes/10`, and a rebuild that loses `notes/1` misses its canary).
Hits are chunks, so several may come from one document; each entry counts once, at the first hit that
matches it, and later hits matching only entries already found gain nothing.
With n entries and gains g_i (1 or 0) at ranks i = 1, 2, ...:

- hits@k: 1 when any of the first k hits matches an entry;
- reciprocal rank: 1 / (rank of the first matching hit), 0 when none matches;
- nDCG@10: sum(g_i / log2(i + 1) for i <= 10) divided by the same sum for an ideal ranking, which puts
  min(n, 10) matching hits first.

Averaged over queries these are hits@k (a share), MRR and nDCG@10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NDCG_DEPTH = 10


def matches(doc_id: str, expect: str) -> bool:
    """Whether a hit of `doc_id` is what `expect` (a document id, or a path prefix ending in `/`) asks for."""
    if expect.endswith("/"):
        return doc_id.startswith(expect)
    return doc_id == expect


def gains(doc_ids: Sequence[str], expect: Sequence[str]) -> list[int]:
    """1 at each rank whose hit matches an entry not matched by an earlier hit, else 0."""
    left = list(dict.fromkeys(e for e in expect if e))
    out = []
    for doc_id in doc_ids:
        found = next((e for e in left if matches(doc_id, e)), None)
        if found is None:
            out.append(0)
        else:
            left.remove(found)
            out.append(1)
    return out


def first_rank(doc_ids: Sequence[str], expect: Sequence[str]) -> int | None:
    """1-based rank of the first hit matching any entry, None when none does."""
    for rank, doc_id in enumerate(doc_ids, start=1):
        if any(matches(doc_id, e) for e in expect):
            return rank
    return None


def hit_at(doc_ids: Sequence[str], expect: Sequence[str], k: int) -> float:
    return 1.0 if first_rank(doc_ids[:k], expect) is not None else 0.0


def reciprocal_rank(doc_ids: Sequence[str], expect: Sequence[str]) -> float:
    rank = first_rank(doc_ids, expect)
    return 0.0 if rank is None else 1.0 / rank


def ndcg(doc_ids: Sequence[str], expect: Sequence[str], depth: int = NDCG_DEPTH) -> float:
    relevant = len({e for e in expect if e})
    if relevant == 0:
        return 0.0
    dcg = sum(g / math.log2(i + 1) for i, g in enumerate(gains(doc_ids[:depth], expect), start=1))
    ideal = sum(1 / math.log2(i + 1) for i in range(1, min(relevant, depth) + 1))
    return dcg / ideal


def summarize(ranked: Sequence[Sequence[str]], expected: Sequence[Sequence[str]], k: int) -> dict:
    """Averages over queries (ranked[q]: the doc ids of query q's hits in order; expected[q]: its
    entries): hits_at_k, mrr, ndcg_at_10, and how many queries had a hit in the first k."""
    n = len(ranked)
    if n == 0:
        return {"queries": 0, "hits": 0, "hits_at_k": 0.0, "mrr": 0.0, "ndcg_at_10": 0.0}
    hits = [hit_at(r, e, k) for r, e in zip(ranked, expected, strict=True)]
    return {"queries": n, "hits": int(sum(hits)), "hits_at_k": round(sum(hits) / n, 4),
            "mrr": round(sum(reciprocal_rank(r, e) for r, e in zip(ranked, expected, strict=True)) / n, 4),
            "ndcg_at_10": round(sum(ndcg(r, e) for r, e in zip(ranked, expected, strict=True)) / n, 4)}
