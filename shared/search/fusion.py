"""Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): each ranked list gives an item
1 / (RRF_K + rank); the fused order sorts by the sum. Only ranks matter, so cosine similarities and
BM25 scores need no common scale."""

from __future__ import annotations

from dataclasses import dataclass, field

RRF_K = 60  # the constant of the paper; it damps the weight of the very first ranks


@dataclass
class Fused:
    row: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # list name -> 1-based rank in that list


def reciprocal_rank_fusion(lists: dict[str, list[int]], k: int = RRF_K) -> list[Fused]:
    """Fuse ranked lists of rows (best first) into one, best first; ties keep the row order stable."""
    fused: dict[int, Fused] = {}
    for name, rows in lists.items():
        for rank, row in enumerate(rows, start=1):
            item = fused.setdefault(row, Fused(row, 0.0))
            item.score += 1.0 / (k + rank)
            item.ranks[name] = rank
    return sorted(fused.values(), key=lambda f: (-f.score, f.row))
