"""Rebuild: merge the segments, build the FAISS index aside, verify it, publish it fenced."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import faiss
import numpy as np

from shared.errors import JobCanceled, JobInputError, LockBusy
from shared.index.doctable import count_by_type
from shared.index.vectorindex import (
    KIND_FLAT,
    KIND_IVF,
    build_flat,
    build_ivf,
    measure_recall,
    verify_version,
    write_version,
)
from shared.index.versions import collect_versions
from shared.jobs.compact import maybe_compact
from shared.jobs.merge import live_rows
from shared.jobs.model import TERMINAL
from shared.jobs.progress import ProgressReporter
from shared.services import Services
from shared.storage import fsync_dir, fsync_tree, reraise
from shared.store.locks import Lease
from shared.store.pointers import PublishRefused

log = logging.getLogger(__name__)


def merge_segments(svc: Services, collection: str, segments: list[int], dim: int) -> tuple[list[dict], np.ndarray, int]:
    """The live chunks of a collection for an index build. Returns (records, vectors, documents)."""
    live, records, vectors, _ = live_rows(svc, collection, segments, dim)
    for rec in records:
        rec.pop("hash", None)
    return records, vectors, len(live)


class _Step:
    """What runs between build steps: progress, cancel flag, lease renewal, optional pause."""

    def __init__(self, svc: Services, job_id: str, lease: Lease, total: int):
        self.svc, self.job_id, self.lease = svc, job_id, lease
        self.progress = ProgressReporter(svc.jobs, job_id, "build", total, svc.settings.progress_every)

    def __call__(self, done: int) -> None:
        self.progress.update(done)
        if self.svc.jobs.cancel_requested(self.job_id):
            raise JobCanceled(self.job_id)
        self.svc.locks.renew(self.lease)
        if self.svc.settings.build_step_delay:
            time.sleep(self.svc.settings.build_step_delay)


def run_rebuild(svc: Services, job_id: str) -> None:
    raw = svc.jobs.raw(job_id)
    collection = raw["collection"]
    if raw["state"] in TERMINAL:
        svc.locks.clear_pending(collection, job_id)
        return
    if not svc.collections.exists(collection):
        svc.locks.clear_pending(collection, job_id)
        raise JobInputError(f"collection {collection!r} does not exist")
    lease = svc.locks.acquire(collection, job_id)
    if lease is None:
        raise LockBusy(collection)
    try:
        svc.locks.clear_pending(collection, job_id)
        if not svc.jobs.start(job_id):
            return
        stats = _build_and_publish(svc, job_id, collection, lease)
    finally:
        svc.locks.release(lease)
    maybe_compact(svc, collection, *stats)
    try:
        collect_versions(svc, collection)
    except Exception:  # collection is housekeeping: it must not turn a published rebuild into a failure
        log.exception("event=versions.collect_failed collection=%s", collection)


def _build_and_publish(svc: Services, job_id: str, collection: str, lease: Lease) -> tuple[int, int, int]:
    """Returns (segments merged, rows they hold, live rows): what decides a compaction."""
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[stage] = round(now - clock, 4)
        clock = now

    embedder = svc.embedder
    segments, changes = svc.collections.snapshot(collection)
    svc.jobs.progress(job_id, "merge", 0, len(segments))
    live, records, vectors, rows_total = live_rows(svc, collection, segments, embedder.dim)
    for rec in records:
        rec.pop("hash", None)
    documents = len(live)
    lap("merge")

    step = _Step(svc, job_id, lease, len(records))
    log.info("event=rebuild.building job=%s collection=%s fence=%s vectors=%s", job_id, collection, lease.fence,
             len(records))
    approximate = len(records) >= svc.settings.approx_threshold
    if approximate:
        index = build_ivf(vectors, svc.settings.build_step, step, svc.settings.ivf_nprobe)
    else:
        index = build_flat(vectors, svc.settings.build_step, step)
    if not len(records):
        step(0)  # an empty collection still checks cancel and lease once
    step.progress.finish()
    lap("build")
    quality = {}
    if approximate:
        svc.jobs.progress(job_id, "measure", 0, 1)
        quality = {"nprobe": faiss.extract_index_ivf(index).nprobe, "nlist": faiss.extract_index_ivf(index).nlist,
                   "recall_at_10": round(measure_recall(index, vectors), 4)}
        lap("measure")

    storage = svc.storage
    parent = storage.indexes_dir(collection)
    storage.remove_stale_temps(parent)  # leftovers of builds killed mid-write; we hold the lease
    final = storage.version_dir(collection, lease.fence)
    tmp = None
    published = False
    try:
        svc.jobs.progress(job_id, "write", 0, 1)
        try:
            tmp = storage.temp_dir(parent, f"v{lease.fence}")
            manifest = write_version(tmp, index, records, {
                "collection": collection, "version": lease.fence, "model": embedder.model_id,
                "kind": KIND_IVF if approximate else KIND_FLAT, **quality,
                "documents": documents, "segments": segments, "built_at": time.time(), "job_id": job_id})
            fsync_tree(tmp)
            lap("write")
            svc.jobs.progress(job_id, "verify", 0, 1)
            verify_version(tmp)
            os.rename(tmp, final)
            fsync_dir(parent)
        except OSError as exc:
            reraise(exc, "an index version")
        lap("verify")
        svc.jobs.progress(job_id, "publish", 0, 1)
        svc.locks.renew(lease)
        pointer = {"version": lease.fence, "path": storage.relative(final), "vectors": manifest["vectors"],
                   "model": manifest["model"], "dim": manifest["dim"], "kind": manifest["kind"],
                   "built_at": manifest["built_at"], "documents": documents, "changes": changes,
                   "checksum": manifest["checksum"], "by_type": json.dumps(count_by_type(records))}
        result = {"version": lease.fence, "vectors": manifest["vectors"], "documents": documents,
                  "kind": manifest["kind"], **quality, "timings": dict(timings)}
        try:
            svc.pointers.publish(lease, pointer, job_id, result)
        except PublishRefused as refused:
            if refused.reason == "canceled":
                raise JobCanceled(job_id) from refused
            raise
        published = True
        # The job's result (with the timings above) was written by the publish script itself, atomically
        # with the pointer; the publish step's own duration is only in this log line.
        lap("publish")
        log.info("event=rebuild.published job=%s collection=%s version=%s vectors=%s timings=%s",
                 job_id, collection, lease.fence, manifest["vectors"], timings)
        return len(segments), rows_total, len(records)
    finally:
        if not published:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
