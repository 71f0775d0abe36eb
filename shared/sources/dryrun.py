"""A reconcile's dry run: what a reconcile would do now, and what it would cost, changing nothing.

It runs inside the API process (the answer is wanted now, and a job would hold the source's reconcile
slot and a worker), so its cost is bounded before and while it works: at most `MAX_SECONDS` of
planning and chunking (a walk of a large non-git tree can pass it; a git source's plan costs a few git
calls), at most `MAX_FILES` new or changed files and `MAX_BYTES` of their text to chunk. Past a bound
it is refused (`PlanTooCostly`, a 409 that says which bound): run the reconcile itself, which reports
the same counts in its result.

`chunks_to_embed` and `chunks_cached` come from chunking the new and changed files with the
collection's chunker and asking the embedding cache for each chunk's content hash (without touching its
LRU order); `eta_seconds` divides the chunks to embed by the embedding rate the workers measured over
every job so far (`embed_rate_source: "measured"`), or by `DECLARED_CHUNKS_PER_SECOND` before they have
embedded `MIN_MEASURED_CHUNKS` chunks (`"declared"`).
"""

from __future__ import annotations

import time

from shared.jobs.ingest import chunk_documents
from shared.services import Services
from shared.sources.batch import read_documents
from shared.sources.paths import check_source_root
from shared.sources.plan import PlanTooCostly, elapsed_check, make_plan

MAX_SECONDS = 10.0
MAX_FILES = 2000
MAX_BYTES = 32 * 1024 * 1024
# MiniLM (ONNX fp32) on this project's 2 shared cores: ~100 chunks/s quiet, ~20 while busy (README).
DECLARED_CHUNKS_PER_SECOND = 20.0
MIN_MEASURED_CHUNKS = 200


def embed_rate(svc: Services) -> tuple[float, str]:
    """(chunks per second, "measured" or "declared")."""
    counted = svc.counters.embedded().values()
    chunks, seconds = sum(c for c, _ in counted), sum(s for _, s in counted)
    if chunks >= MIN_MEASURED_CHUNKS and seconds > 0:
        return chunks / seconds, "measured"
    return DECLARED_CHUNKS_PER_SECOND, "declared"


def dry_run(svc: Services, source: dict) -> dict:
    """The plan of a full reconcile of `source` now. Raises SourcePathRefused (the folder left the
    roots) or PlanTooCostly (past a bound)."""
    started = time.monotonic()
    folder = check_source_root(svc.settings, source["path"])
    check = elapsed_check(MAX_SECONDS, started)
    plan = make_plan(svc, source, folder, None, check=check)
    todo = plan.added + plan.changed
    size = sum(nbytes for _, nbytes in todo)
    if len(todo) > MAX_FILES:
        raise PlanTooCostly(f"{len(todo)} files are new or changed; a dry run chunks at most {MAX_FILES}")
    if size > MAX_BYTES:
        raise PlanTooCostly(f"{size} bytes are new or changed; a dry run chunks at most {MAX_BYTES}")
    records = []
    for start in range(0, len(todo), 50):
        check()
        documents, _, _ = read_documents(svc, source, [rel for rel, _ in todo[start:start + 50]])
        records += chunk_documents(svc, documents)[0]
    hashes = sorted({rec["hash"] for rec in records})
    cached = svc.embed_cache.has_many(svc.embedder.model_id, hashes)
    to_embed = len(hashes) - len(cached)
    rate, rate_source = embed_rate(svc)
    summary = plan.summary()
    return {**{k: summary[k] for k in ("walk", "git_commit", "files_seen", "files_examined", "files_added",
                                       "files_changed", "files_removed", "files_skipped", "files_unchanged")},
            **({"git_fallback": plan.git_fallback} if plan.git_fallback else {}),
            "chunks_total": len(records), "chunks_to_embed": to_embed,
            "chunks_cached": sum(1 for rec in records if rec["hash"] in cached),
            "eta_seconds": round(to_embed / rate, 1), "embed_rate": round(rate, 2), "embed_rate_source": rate_source,
            "seconds": round(time.monotonic() - started, 3)}
