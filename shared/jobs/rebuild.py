"""Rebuild: the new version's parts (`shared.jobs.build`), its new part and manifest written aside and
verified, then published fenced."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from shared import eventnames as names
from shared.errors import JobCanceled, JobInputError, LockBusy, PublishGated, RecallBelowFloor
from shared.index import compressed
from shared.index.compressed import npy_slices
from shared.index.ivf import tune_nprobe
from shared.index.parts import (
    PART_FILE,
    PartRef,
    count_by_type,
    part_name,
    verify_version,
    write_part,
    write_version_manifest,
)
from shared.index.vectorindex import IVF_KINDS, sha256_file
from shared.jobs.build import Built, build_index
from shared.jobs.compact import maybe_compact
from shared.jobs.gate import check_before_publish
from shared.jobs.progress import ProgressReporter
from shared.jobs.versions import collect_versions
from shared.jobstates import TERMINAL
from shared.services import Services
from shared.storage import Storage
from shared.store.locks import Lease
from shared.store.pointers import PublishRefused

log = logging.getLogger(__name__)


def _tuned(svc: Services, built: Built) -> dict:
    """nprobe (and, compressed, the re-rank depth) tuned to the recall target; raises RecallBelowFloor
    when even the best tried is below the floor (nothing has been written yet, so nothing is published
    and the pointer stays)."""
    settings = svc.settings
    if built.vectors_file is None:
        tuned = tune_nprobe(built.part_index, settings.recall_target, settings.ivf_nprobe)
    else:
        path = built.vectors_file
        with compressed.RowFile(path) as floats:
            tuned = compressed.tune(built.part_index, floats.take, lambda size: npy_slices(path, size),
                                    settings.recall_target, settings.ivf_nprobe, settings.rerank_depth)
    tuned["recall_floor"] = settings.recall_floor
    if tuned["recall_at_10"] < settings.recall_floor:
        depth = f" rerank {tuned['rerank']}" if "rerank" in tuned else ""
        raise RecallBelowFloor(
            f"recall@10 {tuned['recall_at_10']:.4f} at nprobe {tuned['nprobe']}{depth} (best of {tuned['ladder']}) "
            f"is below the floor {settings.recall_floor}: the index was not published")
    return tuned


RESULT_FACTS = ("kind", "incremental", "built_from", "reused_rows", "added_rows", "removed_rows", "full_reason",
                "parts_kept", "parts_folded", "quantizer", "nprobe", "rerank", "nlist", "recall_at_10", "recall_target")


def _result_facts(facts: dict) -> dict:
    """What the job result repeats of the manifest's build facts (not the training record or ladder)."""
    return {name: facts[name] for name in RESULT_FACTS if name in facts}


class _Step:
    """What runs between build steps: progress, cancel flag, lease renewal, optional pause."""

    def __init__(self, svc: Services, job_id: str, lease: Lease, total: int):
        self.svc, self.job_id, self.lease = svc, job_id, lease
        self.progress = ProgressReporter(svc.jobs, job_id, names.STAGE_BUILD, total, svc.settings.progress_every)

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
        options = svc.jobs.options(job_id)
        stats = _build_and_publish(svc, job_id, collection, lease, bool(options.get("force")),
                                   int(options.get("allow_shrink") or 0))
    finally:
        svc.locks.release(lease)
    maybe_compact(svc, collection, *stats)
    try:
        collect_versions(svc, collection)
    except Exception:  # collection is housekeeping: it must not turn a published rebuild into a failure
        log.exception("event=versions.collect_failed collection=%s", collection)


class Laps:
    """Seconds spent in each stage of a rebuild, for the job result and the log."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.monotonic()

    def __call__(self, stage: str) -> None:
        now = time.monotonic()
        self.timings[stage] = round(now - self._clock, 4)
        self._clock = now


def _build_and_publish(svc: Services, job_id: str, collection: str, lease: Lease,
                       force: bool = False, allow_shrink: int = 0) -> tuple[int, int, int]:
    """Build the new version's index, write it aside and verify it, pass the quality gate
    (`shared.jobs.gate`; `force` publishes what it refuses, `allow_shrink` documents may go unnoticed by
    the shrink guard), then publish it fenced. Returns
    (segments merged, rows they hold, live rows): what decides a compaction."""
    lap = Laps()
    segments, changes = svc.collections.snapshot(collection)
    svc.jobs.progress(job_id, names.STAGE_MERGE, 0, len(segments))
    # Leftovers of builds killed mid-build or mid-write; we hold the lease.
    svc.storage.remove_stale_temps(svc.storage.version_dir(collection, lease.fence).parent)
    svc.storage.remove_stale_temps(svc.storage.part_dir(collection, part_name(lease.fence)).parent)
    built = _build(svc, job_id, collection, lease, segments, lap)
    try:
        final, manifest, by_type = _write_version(svc, job_id, collection, lease, built, segments, lap)
    finally:
        built.discard()
    try:
        quality = check_before_publish(svc, job_id, collection, final, lease.fence, built.documents, force,
                                       allow_shrink)
        if quality is not None:
            lap(names.STAGE_CANARIES)
        _publish(svc, job_id, lease, built, final, manifest, by_type, changes, lap, quality)
    except (PublishRefused, JobCanceled, PublishGated):
        # Refused (or gated): never published, nobody serves it; its new part is referenced by nothing else.
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(svc.storage.part_dir(collection, part_name(lease.fence)), ignore_errors=True)
        raise
    # Any other error (Redis lost as the script ran) may have come after the publish: the version stays;
    # if it was not published, version collection removes it once a newer version is.
    if quality is not None:
        svc.quality.record_evaluation(collection, quality)
    return len(segments), built.rows_total, built.live_rows


def _build(svc: Services, job_id: str, collection: str, lease: Lease, segments: list[int], lap: Laps) -> Built:
    """The index of the new version (incremental where it can be), with IVF's nprobe tuned."""
    steps: list[_Step] = []

    def start_building(rows: int) -> _Step:
        # Called once what is to be added is known: reading and merging end here, adding begins.
        lap(names.STAGE_MERGE)
        steps.append(_Step(svc, job_id, lease, rows))
        log.info("event=rebuild.building job=%s collection=%s fence=%s adding=%s", job_id, collection,
                 lease.fence, rows)
        return steps[-1]

    built = build_index(svc, collection, segments, lease.fence, start_building)
    try:
        steps[-1].progress.finish()
        lap(names.STAGE_BUILD)
        if built.facts["kind"] in IVF_KINDS and not built.facts["incremental"]:
            # A full build tunes nprobe on its one part; an incremental one keeps the published tuning
            # while the rows stay near those it was tuned for (`shared.jobs.build`).
            svc.jobs.progress(job_id, names.STAGE_MEASURE, 0, 1)
            built.facts.update(_tuned(svc, built), tuned_rows=int(built.part_index.ntotal), tuned_in=lease.fence)
            lap(names.STAGE_MEASURE)
    except BaseException:
        built.discard()
        raise
    return built


def _write_version(svc: Services, job_id: str, collection: str, lease: Lease, built: Built, segments: list[int],
                   lap: Laps) -> tuple[Path, dict, dict]:
    """Write the new part (when there are new rows) and the version's manifest aside, verify them, then
    rename the version to v{fence}. Returns its directory, manifest and live counts by type."""
    storage = svc.storage
    final = storage.version_dir(collection, lease.fence)
    name = part_name(lease.fence)
    part_dir = storage.part_dir(collection, name)
    svc.jobs.progress(job_id, names.STAGE_WRITE, 0, 1)
    refs = list(built.kept)
    try:
        if built.records:
            with storage.aside(part_dir, "an index part") as tmp:
                write_part(tmp, built.hand_over(), built.records, built.segment_of, built.part_segments,
                           lease.fence, built.vectors_file)
            offset = sum(ref.rows for ref in refs)
            refs.append(PartRef(name, offset, len(built.records), sha256_file(part_dir / PART_FILE), None))
        with storage.aside(final, "an index version") as tmp:
            manifest = write_version_manifest(tmp, refs, {
                "collection": collection, "version": lease.fence, "model": svc.embedder.model_id,
                "dim": svc.embedder.dim, **built.facts, "documents": built.documents, "segments": segments,
                "segment_rows": built.rows_total, "built_at": time.time(), "job_id": job_id})
            lap(names.STAGE_WRITE)
            svc.jobs.progress(job_id, names.STAGE_VERIFY, 0, 1)
            verify_version(tmp)
            by_type = count_by_type(tmp, refs)
    except BaseException:
        shutil.rmtree(part_dir, ignore_errors=True)  # nothing references it
        raise
    lap(names.STAGE_VERIFY)
    return final, manifest, by_type


def pointer_record(storage: Storage, final: Path, manifest: dict, built: Built, changes: int, by_type: dict) -> dict:
    """What the collection's pointer says of a version: where it is and what it holds."""
    return {"version": manifest["version"], "path": storage.relative(final), "vectors": manifest["vectors"],
            "model": manifest["model"], "dim": manifest["dim"], "kind": manifest["kind"],
            "built_at": manifest["built_at"], "documents": built.documents, "changes": changes,
            "checksum": manifest["checksum"], "by_type": json.dumps(by_type)}


def _publish(svc: Services, job_id: str, lease: Lease, built: Built, final: Path, manifest: dict, by_type: dict,
             changes: int, lap: Laps, quality: dict | None = None) -> None:
    """The fenced publish: pointer, history, the job's success and the swap message in one script."""
    svc.jobs.progress(job_id, names.STAGE_PUBLISH, 0, 1)
    svc.locks.renew(lease)
    result = {"version": lease.fence, "vectors": manifest["vectors"], "documents": built.documents,
              **_result_facts(built.facts), "timings": dict(lap.timings),
              **({"quality": quality} if quality is not None else {})}
    try:
        record = pointer_record(svc.storage, final, manifest, built, changes, by_type)
        svc.pointers.publish(lease, record, job_id, result)
    except PublishRefused as refused:
        if refused.reason == "canceled":
            raise JobCanceled(job_id) from refused
        raise
    # The job's result (with the timings above) was written by the publish script itself, atomically
    # with the pointer; the publish step's own duration is only in this log line.
    lap(names.STAGE_PUBLISH)
    log.info("event=rebuild.published job=%s collection=%s version=%s vectors=%s incremental=%s built_from=%s "
             "timings=%s", job_id, lease.collection, lease.fence, manifest["vectors"], built.facts["incremental"],
             built.facts["built_from"], lap.timings)
