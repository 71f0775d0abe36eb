"""Tokens the MCP search tool returns, with and without grouping by document, over the sample corpus.

    .venv/bin/python -m tests.bench.agent_tokens [--files 60] [--queries 10] [--embedder minilm]

Starts a real stack (redis-server, one worker, the API; the real model unless --embedder says
otherwise), loads the sample KEPs the first labelled paraphrase questions of
tests/data/search_queries.json are about plus others up to --files, then asks those questions through
`swapline mcp` (the MCP SDK's stdio client) at the tool's defaults (k=5, max_tokens=2000), once with
group_by "document" (the default) and once "none", and once more each without max_tokens. Prints one
line per question: the tokens returned (the API's count, with the embedder's tokenizer), the results
and the distinct documents they come from, and whether the answer was cut.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import requests
from mcp import Client

from shared.search.shaping import MAX_ANSWER_TOKENS
from shared.settings import Settings
from tests.bench.common import ROOT, rebuild, stack, submit, wait_all, wait_served
from tests.test_mcp import server_params, structured
from webapp.devstack.sample import sample_documents

QUERIES = ROOT / "tests" / "data" / "search_queries.json"
BATCH = 20
VARIANTS = (("grouped", "document", 2000), ("chunks", "none", 2000), ("grouped, no cap", "document", None),
            ("chunks, no cap", "none", None))


def questions(count: int) -> list[dict]:
    """The first `count` paraphrases (what an agent asks), then identifiers if there are too few."""
    queries = json.loads(QUERIES.read_text())["queries"]
    ordered = [q for q in queries if q["kind"] == "paraphrase"] + [q for q in queries if q["kind"] != "paraphrase"]
    return ordered[:count]


def corpus(asked: list[dict], files: int) -> list[dict]:
    """The KEPs the questions are about, then others in path order, `files` in all (at least those)."""
    wanted = {f"keps/{r}/README.md" for q in asked for r in q["relevant"]}
    docs = sample_documents()
    chosen = [d for d in docs if d["id"] in wanted]
    chosen += [d for d in docs if d["id"] not in wanted][:max(0, files - len(chosen))]
    return chosen


async def ask(base: str, asked: list[dict]) -> list[dict]:
    rows = []
    async with Client(server_params(base)) as client:
        for q in asked:
            row = {"query": q["query"]}
            for label, group_by, max_tokens in VARIANTS:
                args = {"collection": "keps", "query": q["query"], "group_by": group_by, "max_tokens": max_tokens}
                answer = structured(await client.call_tool("search", args))
                row[label] = {"tokens": answer["tokens"], "results": len(answer["hits"]),
                              "documents": len({h["doc_id"] for h in answer["hits"]}),
                              "truncated": answer["truncated"]}
            rows.append(row)
    return rows


def uncapped_tokens(base: str, rows: list[dict], asked: list[dict]) -> None:
    """Without max_tokens the API reports no count: ask it with the largest cap instead."""
    for row, q in zip(rows, asked, strict=True):
        for label, group_by, max_tokens in VARIANTS:
            if max_tokens is None:
                body = {"query": q["query"], "k": 5, "max_tokens": MAX_ANSWER_TOKENS,
                        **({"group_by": group_by} if group_by != "none" else {})}
                answer = requests.post(f"{base}/v1/collections/keps/search", json=body, timeout=60).json()
                row[label]["tokens"] = answer["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.agent_tokens", description=__doc__)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--embedder", default="minilm")
    args = parser.parse_args()
    asked = questions(args.queries)
    docs = corpus(asked, args.files)
    with stack(Settings(embedder=args.embedder)) as running:
        base = running.base
        created = requests.post(f"{base}/v1/collections", json={"name": "keps"}, timeout=30)
        assert created.status_code == 201, created.text
        started = time.perf_counter()
        jobs = [submit(base, "keps", docs[i:i + BATCH])["id"] for i in range(0, len(docs), BATCH)]
        wait_all(base, jobs, timeout=3600)
        version = rebuild(base, "keps", timeout=600)["result"]["version"]
        wait_served(base, "keps", version)
        chunks = requests.get(f"{base}/v1/collections/keps", timeout=30).json()["chunks"]
        took = time.perf_counter() - started
        print(f"loaded {len(docs)} KEPs ({chunks} chunks) with {args.embedder} in {took:.0f} s")
        rows = asyncio.run(ask(base, asked))
        uncapped_tokens(base, rows, asked)
    labels = [label for label, _, _ in VARIANTS]
    print("| query | " + " | ".join(f"{label}: tokens (results/documents)" for label in labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for row in rows:
        cells = [f"{row[label]['tokens']} ({row[label]['results']}/{row[label]['documents']})"
                 + (" cut" if row[label]["truncated"] and "no cap" not in label else "") for label in labels]
        print(f"| {row['query'][:60]} | " + " | ".join(cells) + " |")
    for label in labels:
        values = [row[label]["tokens"] for row in rows]
        docs_seen = [row[label]["documents"] for row in rows]
        print(f"{label}: tokens mean {sum(values) / len(values):.0f} (min {min(values)}, max {max(values)}), "
              f"documents per answer mean {sum(docs_seen) / len(docs_seen):.1f}")


if __name__ == "__main__":
    main()
