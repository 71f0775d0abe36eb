"""A reconcile's dry run: what a reconcile would do now, and what it would cost, changing nothing.

It runs inside the API process (the answer is wanted now, and a job would hold the source's reconcile
slot and a worker), so its cost is bounded before and while it works: at most `MAX_SECONDS` of
planning and chunking (a walk of a large non-git tree can pass it; a git source's plan costs a few git
calls), at most `MAX_FILES` new or changed files and `MAX_BYTES` of their text to chunk. The time
bound holds inside each part: every git call gets what is left of it as its timeout and may print at
most `GIT_MAX_BYTES` (past that git is not asked: the walk instead meets the bound), the walk checks it
per folder and per path git named, and chunking per file. Past a bound it is refused (`PlanTooCostly`,
a 409 that says which bound): run the reconcile itself, which reports the same counts in its result.
At most `MAX_CONCURRENT` dry runs run at once in one process; another is refused (`DryRunBusy`, a 429
with Retry-After) rather than queued on an API thread.

`chunks_total`, `chunks_to_embed` and `chunks_cached` count distinct chunk texts (content hashes) of
the new and changed files, chunked with the collection's chunker, so total = to embed + cached; the
embedding cache is asked for each hash without touching its LRU order; `eta_seconds` divides the
chunks to embed by the embedding rate the workers measured over every job so far
(`embed_rate_source: "measured"`), or by `DECLARED_CHUNKS_PER_SECOND` before they have embedded
`MIN_MEASURED_CHUNKS` chunks (`"declared"`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from shared.index.embedders import ingest_model_id
from shared.jobs.ingest import chunk_documents
from shared.services import Services
from shared.sources.batch import read_documents
from shared.sources.paths import check_source_root
from shared.sources.plan import PlanTooCostly, elapsed_check, make_plan

MAX_SECONDS = 10.0
MAX_FILES = 2000
MAX_BYTES = 32 * 1024 * 1024
GIT_MAX_BYTES = 4 * 1024 * 1024  # one git call's output (a reconcile allows 64 MiB)
MAX_CONCURRENT = 1  # dry runs at once in one API process
BUSY_RETRY_AFTER = 2  # seconds a refused caller is told to wait
# MiniLM (ONNX fp32) on this project's 2 shared cores: ~100 chunks/s quiet, ~20 while busy (README).
DECLARED_CHUNKS_PER_SECOND = 20.0
MIN_MEASURED_CHUNKS = 200


class DryRunBusy(Exception):
    """Another dry run is running in this process."""


# The one owner of the process's dry-run slots.
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT)


@contextmanager
def _slot() -> Iterator[None]:
    if not _SLOTS.acquire(blocking=False):
        raise DryRunBusy(f"{MAX_CONCURRENT} dry run(s) already running in this process")
    try:
        yield
    finally:
        _SLOTS.release()


def embed_rate(svc: Services) -> tuple[float, str]:
    """(chunks per second, "measured" or "declared")."""
    counted = svc.counters.embedded().values()
    chunks, seconds = sum(c for c, _ in counted), sum(s for _, s in counted)
    if chunks >= MIN_MEASURED_CHUNKS and seconds > 0:
        return chunks / seconds, "measured"
    return DECLARED_CHUNKS_PER_SECOND, "declared"


def dry_run(svc: Services, source: dict) -> dict:
    """The plan of a full reconcile of `source` now. Raises SourcePathRefused (the folder left the
    roots), PlanTooCostly (past a bound) or DryRunBusy (another dry run holds the process's slot)."""
    with _slot():
        return _dry_run(svc, source)


def _dry_run(svc: Services, source: dict) -> dict:
    started = time.monotonic()
    folder = check_source_root(svc.settings, source["path"])
    check = elapsed_check(MAX_SECONDS, started)
    plan = make_plan(svc, source, folder, None, check=check, deadline=started + MAX_SECONDS,
                     git_max_bytes=GIT_MAX_BYTES)
    check()  # git may have used the budget up
    todo = plan.added + plan.changed
    size = sum(nbytes for _, nbytes in todo)
    if len(todo) > MAX_FILES:
        raise PlanTooCostly(f"{len(todo)} files are new or changed; a dry run chunks at most {MAX_FILES}")
    if size > MAX_BYTES:
        raise PlanTooCostly(f"{size} bytes are new or changed; a dry run chunks at most {MAX_BYTES}")
    hashes: set[str] = set()
    for rel, _ in todo:
        check()
        documents, _, _ = read_documents(svc, source, [rel])
        hashes.update(rec["hash"] for rec in chunk_documents(svc, documents)[0])
    # Workers cache under their ingest runtime, which a calibrated API's query runtime may differ from.
    cached = svc.embed_cache.has_many(ingest_model_id(svc.embedder), sorted(hashes))
    to_embed = len(hashes) - len(cached)
    rate, rate_source = embed_rate(svc)
    summary = plan.summary()
    return {**{k: summary[k] for k in ("walk", "git_commit", "files_seen", "files_examined", "files_added",
                                       "files_changed", "files_removed", "files_skipped", "files_unchanged")},
            **({"git_fallback": plan.git_fallback} if plan.git_fallback else {}),
            "chunks_total": len(hashes), "chunks_to_embed": to_embed, "chunks_cached": len(cached),
            "eta_seconds": round(to_embed / rate, 1), "embed_rate": round(rate, 2), "embed_rate_source": rate_source,
            "seconds": round(time.monotonic() - started, 3)}
