"""One search over one loaded version, in one of three modes:

- `vector`: FAISS nearest neighbours of the embedded query (meaning);
- `keyword`: BM25 over the version's keyword index (exact words: identifiers, numbers, error strings);
- `hybrid`: both, each to HYBRID_DEPTH candidates, fused by reciprocal rank fusion.

A filter is evaluated once per document (the version's documents table) into a mask over rows, and
both sides search only the rows it admits, so a selective filter still answers the true top k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.index.parts import ServedVersion
from shared.search.filters import Filter
from shared.search.fusion import reciprocal_rank_fusion

MODES = ("vector", "keyword", "hybrid")
# Chosen by measurement (tests/bench/search_modes.py, README "Search modes"): hybrid found the exact
# identifiers vector search missed and lost nothing on paraphrased questions.
DEFAULT_MODE = "hybrid"
# Candidates each side contributes to the fusion (at least k). Deeper lists let chunks ranked middling
# by both sides outvote a chunk one side ranks first: on the labelled sample queries depths 10 to 40
# kept every paraphrase vector search finds while 50 and 100 lost some (tests/bench/search_modes.py).
HYBRID_DEPTH = 20


class KeywordUnavailable(Exception):
    """The version was built before keyword indexes existed; a rebuild adds one."""


@dataclass
class Answer:
    mode: str  # the mode that answered (hybrid over a version without a keyword index is vector)
    hits: list[dict]
    scanned: int  # rows eligible under the filter, every one of them considered (all rows without one)
    matched_documents: int | None  # documents the filter admits (None without a filter)


def _hit(rec: dict, row: int, score: float, ranks: dict[str, int], scores: dict[tuple[str, int], float]) -> dict:
    return {"doc_id": rec["doc_id"], "chunk_id": rec["chunk_id"], "score": score, "text": rec["text"],
            "heading_path": rec.get("heading_path", []), "metadata": rec.get("metadata", {}),
            "vector_rank": ranks.get("vector"), "keyword_rank": ranks.get("keyword"),
            "vector_score": scores.get(("vector", row)), "keyword_score": scores.get(("keyword", row)),
            **({"lines": rec["lines"]} if "lines" in rec else {})}


def search(version: ServedVersion, query: str, k: int, mode: str, flt: Filter | None,
           embed: Callable[[str], np.ndarray]) -> Answer:
    """The top `k` hits for `query`; `embed` turns the query into a vector (not called in keyword mode)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if version.keyword is None:
        if mode == "keyword":
            raise KeywordUnavailable(f"index v{version.version} has no keyword index; rebuild the collection")
        mode = "vector"
    matched, allowed = flt.select(version.documents) if flt is not None else (None, None)
    scanned = version.vectors if allowed is None else int(allowed.sum())
    depth = k if mode != "hybrid" else max(k, HYBRID_DEPTH)
    lists: dict[str, list[tuple[int, float]]] = {}
    if mode in ("vector", "hybrid"):
        lists["vector"] = version.nearest(embed(query), depth, allowed)
    if mode in ("keyword", "hybrid"):
        assert version.keyword is not None  # without one, mode became "vector" above
        lists["keyword"] = version.keyword.top(query, depth, allowed)
    scores = {(name, row): score for name, found in lists.items() for row, score in found}
    if mode == "hybrid":
        fused = reciprocal_rank_fusion({name: [row for row, _ in found] for name, found in lists.items()})
        ranked = [(f.row, f.score, f.ranks) for f in fused[:k]]
    else:
        ranked = [(row, score, {mode: rank}) for rank, (row, score) in enumerate(lists[mode][:k], start=1)]
    records = version.records_at([row for row, _, _ in ranked])  # the hits' records in one read per part
    hits = [_hit(rec, row, score, ranks, scores) for rec, (row, score, ranks) in zip(records, ranked, strict=True)]
    return Answer(mode, hits, scanned, matched)
