"""Snapshots: one self-contained archive of a collection (`shared.jobs.archive`), listed, downloaded,
and restored as a new collection.

A `snapshot` job holds the collection's rebuild lease while it reads (no rebuild publishes, no version
is collected, no compaction deletes a segment meanwhile) and writes `snapshots/{collection}/{id}.tar`
under a temporary name, fsynced, then `{id}.json` beside it (sha256 and size of the whole archive,
version, fence, created_at), then renames the archive into place: a listed snapshot is complete.
Snapshots are backups: they outlive a drop of their collection.

A `restore` job checks the archive (every member against the inner manifest, the layout, the bounds)
while extracting it aside under `restoring/`, points the version's manifest at the new name, gives the
parts' files back the mtimes their part.json recorded, verifies the version, renames the folders to
the new collection's and registers it with `adopt_collection`. On any failure nothing stays: no
collection, no folder, no source record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from shared.errors import JobInputError, LockBusy, RequestRefused
from shared.index.parts import PART_FILE, is_format2, part_refs, read_part_meta, verify_version
from shared.index.vectorindex import MANIFEST_FILE, VerifyFailed, read_manifest
from shared.jobkinds import RESTORE, SNAPSHOT
from shared.jobs.archive import ArchiveRefused, check_and_extract, file_sha256, write_archive
from shared.jobs.fromdisk import adopt_collection, source_records
from shared.jobs.submit import check_capacity, create_and_enqueue
from shared.jobstates import TERMINAL, new_job_id
from shared.names import is_snapshot_id
from shared.services import Services
from shared.storage import TMP_PREFIX, UnsafePath, fsync_dir

log = logging.getLogger(__name__)

SEGMENT_FILES = ("chunks.jsonl", "vectors.npy", "meta.json")


def new_snapshot_id() -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def sidecar(archive: Path) -> Path:
    return archive.with_suffix(".json")


def snapshot_info(svc: Services, collection: str, snapshot_id: str) -> dict | None:
    """A complete snapshot's facts (its sidecar), None when there is none of that id."""
    try:
        path = svc.storage.snapshot_path(collection, snapshot_id)
        facts = json.loads(sidecar(path).read_text())
    except (UnsafePath, OSError, ValueError):
        return None
    return facts if path.is_file() and isinstance(facts, dict) else None


def list_snapshots(svc: Services, collection: str) -> list[dict]:
    """The collection's complete snapshots, oldest first."""
    folder = svc.storage.snapshots_dir(collection)
    out = []
    for child in sorted(folder.glob("*.tar")) if folder.is_dir() else []:
        facts = snapshot_info(svc, collection, child.stem) if is_snapshot_id(child.stem) else None
        if facts:
            out.append({k: facts.get(k) for k in ("id", "version", "bytes", "sha256", "created_at")})
    return out


# creating one

def submit_snapshot(svc: Services, collection: str, bounded: bool = False) -> dict:
    if svc.pointers.get(collection) is None:
        raise RequestRefused(409, "nothing_published", f"collection {collection!r} has no published index "
                                                       f"version to snapshot yet")
    if bounded:
        check_capacity(svc, SNAPSHOT.name)
    return create_and_enqueue(svc, SNAPSHOT.name, collection, {"id": new_snapshot_id()}, bounded=bounded)


def _members(svc: Services, collection: str, version_dir: Path, manifest: dict, segments: list[int]):
    """(name in the archive, file) of the version, its parts and the segments."""
    base = f"indexes/v{manifest['version']}"
    yield f"{base}/{MANIFEST_FILE}", version_dir / MANIFEST_FILE
    for name in sorted(manifest.get("files") or {}):
        yield f"{base}/{name}", version_dir / name
    for ref in part_refs(version_dir, manifest):
        part = svc.storage.part_dir(collection, ref.name)
        yield f"indexes/parts/{ref.name}/{PART_FILE}", part / PART_FILE
        for name in sorted(read_part_meta(part, ref.sha256)["files"]):
            yield f"indexes/parts/{ref.name}/{name}", part / name
    for seq in segments:
        folder = svc.storage.segment_dir(collection, seq)
        for name in SEGMENT_FILES:
            yield f"segments/{seq:010d}/{name}", folder / name


def create_snapshot(svc: Services, collection: str, snapshot_id: str) -> dict:
    """Write the archive of the served version and the segment list (the caller holds the lease)."""
    pointer = svc.pointers.get(collection)
    if pointer is None:
        raise JobInputError(f"collection {collection!r} has no published index version to snapshot")
    version_dir = svc.storage.version_dir(collection, int(pointer["version"]))
    try:
        manifest = verify_version(version_dir)
    except (OSError, VerifyFailed) as exc:
        raise JobInputError(f"version {pointer['version']} fails its checks, nothing was archived: {exc}") from exc
    if not is_format2(manifest):
        raise JobInputError(f"version {pointer['version']} is format 1: rebuild the collection, then snapshot it")
    segments = svc.collections.segments(collection)
    final = svc.storage.snapshot_path(collection, snapshot_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sources = source_records(svc, collection)
    inner = {"collection": collection, "version": int(pointer["version"]), "fence": int(pointer["fence"]),
             "created_at": created_at, "segments": segments, "sources": sources}
    try:
        digest, size, listed = write_archive(tmp, _members(svc, collection, version_dir, manifest, segments), inner)
        facts = {"id": snapshot_id, "collection": collection, "version": inner["version"], "fence": inner["fence"],
                 "created_at": created_at, "sha256": digest, "bytes": size, "members": len(listed["members"]),
                 "segments": len(segments)}
        svc.storage.write_file(sidecar(final), json.dumps(facts, indent=1).encode(), "a snapshot")
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if not final.exists():
            sidecar(final).unlink(missing_ok=True)
        raise
    return facts


def run_snapshot(svc: Services, job_id: str) -> None:
    raw = svc.jobs.raw(job_id)
    collection = raw["collection"]
    if raw["state"] in TERMINAL:
        return
    if not svc.collections.exists(collection):
        raise JobInputError(f"collection {collection!r} does not exist")
    lease = svc.locks.acquire(collection, job_id)
    if lease is None:
        raise LockBusy(collection)
    try:
        if not svc.jobs.start(job_id):
            return
        facts = create_snapshot(svc, collection, svc.jobs.options(job_id)["id"])
    finally:
        svc.locks.release(lease)
    svc.jobs.succeed(job_id, facts)
    log.info("event=snapshot.written job=%s collection=%s id=%s version=%s bytes=%s", job_id, collection,
             facts["id"], facts["version"], facts["bytes"])


# restoring one

def check_restore_target(svc: Services, name: str) -> None:
    """RequestRefused (409) unless `name` is free: no collection, no drop running, no folders."""
    if svc.collections.exists(name):
        raise RequestRefused(409, "collection_exists", f"collection {name!r} already exists")
    if svc.collections.dropping_job(name) and svc.jobs.state(svc.collections.dropping_job(name) or "") not in TERMINAL:
        raise RequestRefused(409, "collection_dropping", f"collection {name!r} is being dropped")
    if svc.storage.segments_dir(name).exists() or svc.storage.indexes_dir(name).exists():
        raise RequestRefused(409, "data_exists", f"the data dir holds folders of a collection {name!r} that Redis "
                                                 f"does not know: recover it (POST /v1/admin/recover) or remove them")


def submit_restore_from(svc: Services, name: str, collection: str, snapshot_id: str, bounded: bool = False) -> dict:
    """A restore of a kept snapshot into the new collection `name`; 404 when there is no such snapshot."""
    if snapshot_info(svc, collection, snapshot_id) is None:
        raise RequestRefused(404, "snapshot_not_found", f"collection {collection!r} has no snapshot {snapshot_id!r}")
    check_restore_target(svc, name)
    if bounded:
        check_capacity(svc, RESTORE.name)
    return create_and_enqueue(svc, RESTORE.name, name, {"collection": collection, "id": snapshot_id}, bounded=bounded)


def submit_restore_upload(svc: Services, name: str, stream, length: int, bounded: bool = False) -> dict:
    """Store an uploaded archive (`length` bytes from `stream`) under staging/ and submit its restore."""
    check_restore_target(svc, name)
    if bounded:
        check_capacity(svc, RESTORE.name)
    job_id = new_job_id()
    path = svc.storage.upload_path(job_id)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        svc.storage.write_stream(tmp, stream, length, "an uploaded snapshot")
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        return create_and_enqueue(svc, RESTORE.name, name, {"upload": True, "bytes": length}, job_id, bounded)
    except BaseException:
        if svc.jobs.state(job_id) is None:  # no job was created: nobody will read it
            path.unlink(missing_ok=True)
        raise  # else the job exists (its confirmation failed, say): the archive is its input


def _archive_of(svc: Services, job_id: str, options: dict) -> Path:
    if options.get("upload"):
        path = svc.storage.upload_path(job_id)
        if not path.is_file():
            raise JobInputError("the uploaded archive is missing from the data dir")
        return path
    facts = snapshot_info(svc, options["collection"], options["id"])
    if facts is None:
        raise JobInputError(f"snapshot {options['id']} of {options['collection']!r} no longer exists")
    path = svc.storage.snapshot_path(options["collection"], options["id"])
    if path.stat().st_size != facts.get("bytes") or file_sha256(path) != facts.get("sha256"):
        raise JobInputError(f"checksum mismatch: snapshot {options['id']} is not the archive its .json describes")
    return path


def _prepare(svc: Services, name: str, staged: Path, inner: dict) -> None:
    """Make the extracted folders the new collection's: the manifest names it, each part's files get
    back the mtimes their part.json recorded, and the version passes its checks."""
    version_dir = staged / "indexes" / f"v{inner['version']}"
    try:
        manifest = read_manifest(version_dir)
        manifest["collection"] = name  # outside the manifest's checksum, which covers its parts and bitmaps
        (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        for ref in part_refs(version_dir, manifest):
            part = staged / "indexes" / "parts" / ref.name
            for file_name, facts in read_part_meta(part, ref.sha256)["files"].items():
                os.utime(part / file_name, ns=(facts["mtime_ns"], facts["mtime_ns"]))
        verify_version(version_dir)
    except (OSError, ValueError, KeyError, TypeError, VerifyFailed) as exc:
        raise ArchiveRefused(f"the archived version fails its checks: {exc}") from exc


def restore(svc: Services, job_id: str, name: str, archive: Path) -> dict:
    """Check and extract `archive`, move it in as collection `name`, register it. Leaves nothing on
    failure (ArchiveRefused or JobInputError say why)."""
    storage = svc.storage
    staged = storage.temp_dir(storage.restoring_dir(), f"restore-{name}")
    moved: list[Path] = []
    try:
        inner = check_and_extract(archive, staged, svc.settings.max_snapshot_bytes)
        _prepare(svc, name, staged, inner)
        try:
            check_restore_target(svc, name)
        except RequestRefused as refused:
            raise JobInputError(refused.message) from None
        (staged / "segments").mkdir(exist_ok=True)
        for top, final in (("segments", storage.segments_dir(name)), ("indexes", storage.indexes_dir(name))):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged / top, final)  # fails when a folder of that name appeared meanwhile
            moved.append(final)
            fsync_dir(final.parent)
        # Sources get new ids: the ones in the archive may still belong to the original collection.
        sources = [{**s, "id": uuid.uuid4().hex, "collection": name} for s in inner.get("sources") or []
                   if isinstance(s, dict)]
        storage.write_sources(name, sources)
        adopted = adopt_collection(svc, name)
        if "skipped" in adopted:
            raise JobInputError(f"collection {name!r} could not be registered: {adopted['skipped']}")
    except BaseException:
        # Undo the move unless the collection got registered (Redis answered but the reply was lost, a
        # recover adopted the folders meanwhile): then the folders are its data.
        if moved and not _registered(svc, name):
            for path in moved:
                shutil.rmtree(path, ignore_errors=True)
            storage.remove_sources(name)
        raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {**adopted, "from": {"collection": inner["collection"], "version": inner["version"]},
            "bytes": archive.stat().st_size, "embedded": 0}


def _registered(svc: Services, name: str) -> bool:
    try:
        return svc.collections.exists(name)
    except Exception:  # Redis unreachable: keep the folders (a recover registers them later)
        return True


def run_restore(svc: Services, job_id: str) -> None:
    raw = svc.jobs.raw(job_id)
    options = svc.jobs.options(job_id)
    if raw["state"] in TERMINAL:
        _forget_upload(svc, job_id, options)
        return
    if not svc.jobs.start(job_id):
        return
    try:
        archive = _archive_of(svc, job_id, options)
        try:
            result = restore(svc, job_id, raw["collection"], archive)
        except ArchiveRefused as refused:
            raise JobInputError(f"the archive was refused, nothing was restored: {refused}") from refused
    except JobInputError:
        _forget_upload(svc, job_id, options)  # the job fails: its input is of no further use
        raise
    # Any other error (Redis down, a failover) runs the job again: the upload stays for that run.
    svc.jobs.succeed(job_id, result)
    _forget_upload(svc, job_id, options)
    log.info("event=restore.done job=%s collection=%s version=%s documents=%s", job_id, raw["collection"],
             result["version"], result["documents"])


def _forget_upload(svc: Services, job_id: str, options: dict) -> None:
    if options.get("upload"):
        svc.storage.upload_path(job_id).unlink(missing_ok=True)
