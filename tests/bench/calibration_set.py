"""Writes the fixed texts embedder calibration runs on (shared/index/calibration_set.json):

    .venv/bin/python -m tests.bench.calibration_set

The labelled queries of tests/data/search_queries.json and 256 chunks of the sample corpus, chunked as
ingest does: for each query, the first two chunks of each relevant KEP and up to two of its chunks that
contain the query's words, then chunks of other KEPs, drawn with a fixed seed, as distractors. Each chunk
keeps its KEP's id, so hits@5 over the set is a check of the ranking, not only of the vectors. Run again
only when the corpus, the queries or the chunking change (the file is committed; calibration records
name its digest, so a new set calibrates again).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from tests.bench.search_modes import corpus_records, load_queries

TARGET = Path(__file__).resolve().parents[2] / "shared" / "index" / "calibration_set.json"
CHUNKS = 256


def build() -> dict:
    records, texts = corpus_records()
    queries = load_queries()
    by_doc: dict[str, list[int]] = defaultdict(list)
    for row, rec in enumerate(records):
        by_doc[rec["doc_id"]].append(row)
    chosen: list[int] = []
    for q in queries:
        words = q["query"].lower().split()
        for doc in sorted(q["relevant_ids"]):
            rows = by_doc[doc]
            matching = [r for r in rows if all(w in texts[r].lower() for w in words)]
            for row in rows[:2] + matching[:2]:
                if row not in chosen:
                    chosen.append(row)
    relevant = {doc for q in queries for doc in q["relevant_ids"]}
    others = [row for row in range(len(records)) if records[row]["doc_id"] not in relevant]
    chosen += random.Random(20).sample(others, max(0, CHUNKS - len(chosen)))
    return {
        "about": "Fixed texts for embedder calibration (shared/index/calibration.py), written by "
                 "tests/bench/calibration_set.py from the sample corpus and tests/data/search_queries.json.",
        "chunks": [{"doc": records[row]["doc_id"], "text": texts[row]} for row in chosen[:CHUNKS]],
        "queries": [{"query": q["query"], "relevant": sorted(q["relevant_ids"])} for q in queries],
    }


def main() -> None:
    data = build()
    TARGET.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n")
    print(f"{TARGET}: {len(data['chunks'])} chunks, {len(data['queries'])} queries, {TARGET.stat().st_size} bytes")


if __name__ == "__main__":
    main()
