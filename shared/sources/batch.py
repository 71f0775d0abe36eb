"""A child of a reconcile: one batch of a source's files read, chunked, embedded and written as one
segment, then recorded as held. It ends in a state of its own and counts itself into its parent's
barrier whatever happens (succeeded, failed for good, canceled, skipped)."""

from __future__ import annotations

import json
import logging
import time

from shared.errors import JobCanceled, JobInputError, TryAgain
from shared.jobs.ingest import write_documents
from shared.jobstates import iso_time
from shared.services import Services
from shared.sources.files import content_problem, digest, document, read_in_source
from shared.sources.finish import settle_child
from shared.sources.paths import SourcePathRefused, check_source_root
from shared.store.sources import FileState

log = logging.getLogger(__name__)


def read_documents(svc: Services, source: dict, paths: list[str], source_commit: str | None = None,
                   ) -> tuple[list[dict], dict[str, FileState], list[str]]:
    """(documents, what is held of each once written, files gone or no longer indexable). A read
    error other than "not found" propagates: the batch is retried. `source_commit`: the HEAD commit
    the parent reconcile planned at (a git work tree)."""
    try:
        folder = check_source_root(svc.settings, source["path"])
    except SourcePathRefused as refused:
        raise JobInputError(refused.message) from None
    documents, held, gone = [], {}, []
    indexed_at = iso_time(time.time())
    for rel in paths:
        try:
            info, data, problem = read_in_source(folder, rel, svc.settings.max_document_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            gone.append(rel)
            continue
        text = None
        if problem is None:
            assert data is not None  # a read without a problem holds the bytes
            problem, text = content_problem(data, svc.settings.max_document_bytes)
        if problem:
            gone.append(rel)
            continue
        # content_problem gives the text when it finds no problem; a read without one has both below
        assert text is not None and data is not None and info is not None
        held[rel] = FileState(info.st_size, info.st_mtime_ns, digest(data))
        documents.append(document(source, rel, text, indexed_at, source_commit, held[rel]))
    return documents, held, gone


def run_batch(svc: Services, job_id: str, final_attempt: bool = True, worker: str = "") -> None:
    """Run one batch. On a transient error before the last attempt raises TryAgain (the task retries
    it alone, the job stays running); on the last attempt the job fails and the parent hears of it."""
    raw = svc.jobs.begin(job_id)
    if raw is None:  # canceled while queued (its parent was canceled), or ended before
        settle_child(svc, job_id)
        return
    options = json.loads(raw.get("options") or "{}")
    paths = options.get("paths") or []
    attempts = int(raw.get("attempts") or 0) + 1
    svc.jobs.set_fields(job_id, attempts=attempts, worker=worker)
    started = time.monotonic()
    try:
        parent = options.get("parent")
        if svc.jobs.cancel_requested(job_id) or (parent and svc.jobs.cancel_requested(parent)):
            raise JobCanceled(job_id)
        if "segment" in raw:
            seq, summary = int(raw["segment"]), json.loads(raw.get("summary") or "{}")
        else:
            source = svc.sources.get(options["source"])
            if source is None:
                raise JobInputError(f"source {options['source']} was removed")
            documents, held, gone = read_documents(svc, source, paths, options.get("source_commit"))
            seq, summary = write_documents(svc, job_id, raw["collection"], documents,
                                           [source["prefix"] + g for g in gone])
            svc.sources.record_files(source["id"], held, gone)
        svc.jobs.succeed(job_id, {"segment": seq, "files": len(paths), **summary, "attempts": attempts,
                                  "worker": worker, "seconds": round(time.monotonic() - started, 3)})
    except JobCanceled:
        svc.jobs.cancel(job_id, "canceled by request")
    except JobInputError as exc:
        svc.jobs.fail(job_id, str(exc))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if not final_attempt:
            svc.jobs.set_fields(job_id, last_error=error)
            log.warning("event=batch.retry job=%s attempt=%s error=%r", job_id, attempts, error)
            raise TryAgain(error) from exc
        svc.jobs.fail(job_id, f"{error} (after {attempts} attempts; files: {', '.join(paths)})")
        log.error("event=batch.failed job=%s attempts=%s error=%r", job_id, attempts, error)
    settle_child(svc, job_id)
