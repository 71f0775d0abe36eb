"""Redis state rebuilt from the data dir: the disaster-recovery step (`POST /v1/admin/recover`, a
`recover` job) and the last step of a snapshot restore.

Not to be confused with `shared.jobs.liveness` (re-sending jobs whose worker was lost, under
`Services.recover_lock`): this reads segments, versions and source records from disk and registers a
collection that Redis does not know, with nothing re-embedded.

What is rebuilt for a collection (`adopt_collection`), in one Lua script so that it appears whole:
- the document map and chunk count, by replaying its segments in order exactly as
  `register_segment.lua` does (later segments win, tombstones delete);
- the segment list and the segment counter (at least the highest segment number on disk);
- the fence counter, at least the highest fence on disk (version v{N} and part p{N} folders), so a
  later rebuild never reuses one;
- the pointer: the newest version that passes `verify_version`, with the fields a publish writes;
  its history: every version that passes, oldest pushed first (newest first in the list);
- its sources, from `sources/{collection}.json`, with an empty file state (the documents do not
  record file sizes and mtimes; the next reconcile re-reads the files, and their chunks' vectors come
  from the segments or the embedding cache, so nothing is embedded again).

Segment order: Redis kept the registration order; on disk the newest good version's manifest still
lists the segments it was built from in that order. A compacted segment (always the head of the list)
comes first, then the segments that version names in its order, then the rest by number.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared import eventnames as names
from shared.index.parts import PART_NAME, PARTS_DIR, count_by_type, is_format2, part_refs, verify_version
from shared.index.vectorindex import VerifyFailed
from shared.jobstates import TERMINAL
from shared.names import is_job_id
from shared.search.engine import MODES
from shared.services import Services
from shared.storage import UnsafePath

log = logging.getLogger(__name__)

VERSION_DIR = re.compile(r"v(\d{1,18})")
SOURCE_FIELDS = ("id", "collection", "path", "include", "exclude", "watch", "prefix", "created_at", "git_commit")


def source_records(svc: Services, collection: str) -> list[dict]:
    """The collection's source records as the data dir and snapshots keep them."""
    return [{k: s.get(k) for k in SOURCE_FIELDS} for s in svc.sources.of_collection(collection)]


def save_sources(svc: Services, collection: str) -> None:
    """Keep the collection's source records in the data dir (called after each change of them)."""
    svc.storage.write_sources(collection, source_records(svc, collection))


def save_config(svc: Services, collection: str) -> None:
    """Keep the collection's settings (canaries with `max_drop`, `default_mode`) in the data dir (called
    after each change of them), so recover restores them."""
    config: dict = {}
    canaries = svc.quality.canaries(collection)
    if canaries:
        config["canaries"] = canaries
    mode = svc.collections.info(collection).get("default_mode")
    if mode:
        config["default_mode"] = mode
    svc.storage.write_config(collection, config)


def _adopt_config(svc: Services, name: str) -> bool:
    """Restore what `save_config` kept; False when nothing was kept (or it is not a record it wrote)."""
    config = svc.storage.read_config(name)
    canaries, mode = config.get("canaries"), config.get("default_mode")
    if isinstance(canaries, dict) and isinstance(canaries.get("canaries"), list):
        svc.quality.set_canaries(name, canaries)
    if mode in MODES:
        svc.collections.set_default_mode(name, mode)
    return bool(config)


@dataclass
class Found:
    """What the data dir holds of one collection."""

    segments: dict[int, dict] = field(default_factory=dict)  # seq -> meta.json (readable ones)
    versions: list[tuple[int, Path, dict]] = field(default_factory=list)  # verified, oldest first
    refused: list[dict] = field(default_factory=list)  # {"version", "error"} of those that failed
    highest_fence: int = 0
    highest_segment: int = 0


def _numbered(folder: Path, pattern: re.Pattern) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(c.name[1:]) for c in folder.iterdir() if pattern.fullmatch(c.name))


def scan(svc: Services, name: str) -> Found:
    """Read (never change) a collection's folders: its segments' metadata and every version, verified."""
    storage, found = svc.storage, Found()
    for seq in storage.segment_seqs(name):
        found.highest_segment = max(found.highest_segment, seq)
        try:
            found.segments[seq] = storage.read_segment_meta(name, seq)
        except (OSError, ValueError) as exc:
            log.warning("event=fromdisk.segment_unreadable collection=%s seq=%s error=%r", name, seq, str(exc))
    indexes = storage.indexes_dir(name)
    versions = _numbered(indexes, VERSION_DIR)
    parts = _numbered(indexes / PARTS_DIR, PART_NAME)
    found.highest_fence = max([0, *versions, *parts])
    for version in versions:
        directory = storage.version_dir(name, version)
        try:
            manifest = verify_version(directory)
            if int(manifest.get("version", version)) != version:
                raise VerifyFailed(f"{directory} holds version {manifest.get('version')}")
            found.versions.append((version, directory, manifest))
        except (OSError, ValueError, KeyError, TypeError, VerifyFailed, UnsafePath) as exc:
            found.refused.append({"version": version, "error": str(exc)[:500]})
            log.warning("event=fromdisk.version_refused collection=%s version=%s error=%r", name, version, str(exc))
    return found


def segment_order(found: Found) -> list[int]:
    """The segment list: the live compacted segment first, then the newest good version's segments
    in its order, then the others by number; segments a present compacted one replaced are left out."""
    replaced = {int(s) for meta in found.segments.values() for s in meta.get("compacted_from") or []}
    live = [seq for seq in found.segments if seq not in replaced]
    built_from = [int(s) for s in found.versions[-1][2].get("segments") or []] if found.versions else []
    rank = {seq: i for i, seq in enumerate(built_from)}

    def key(seq: int) -> tuple[int, int]:
        if found.segments[seq].get("compacted_from"):
            return (0, seq)
        return (1, rank[seq]) if seq in rank else (2, seq)

    return sorted(live, key=key)


def _doc_chunks(svc: Services, name: str, seq: int, meta: dict) -> dict[str, int]:
    """What `write_documents` registered for a segment: each document's chunk count, -1 for a tombstone."""
    counts = Counter(rec["doc_id"] for rec in svc.storage.iter_segment_records(name, seq))
    return {**{doc: counts.get(doc, 0) for doc in meta.get("docs") or []},
            **{doc: -1 for doc in meta.get("tombstones") or []}}


def replay(svc: Services, name: str, order: list[int], found: Found) -> tuple[dict[str, str], int, list[int]]:
    """The document map ("seq:chunks"), the chunk count, and the change counter after each segment,
    as `register_segment.lua` builds them."""
    docs: dict[str, str] = {}
    chunks, changes, changes_after = 0, 0, []
    for seq in order:
        for doc, count in _doc_chunks(svc, name, seq, found.segments[seq]).items():
            old = docs.get(doc)
            if old is not None:
                chunks -= int(old.rsplit(":", 1)[1])
            if count >= 0:
                docs[doc] = f"{seq}:{count}"
                chunks += count
                changes += 1
            elif old is not None:
                del docs[doc]
                changes += 1
        changes_after.append(changes)
    return docs, chunks, changes_after


def pointer_of(svc: Services, name: str, directory: Path, manifest: dict, changes: int) -> dict:
    """The pointer record a publish of this version wrote (see `shared.jobs.rebuild.pointer_record`)."""
    by_type = count_by_type(directory, part_refs(directory, manifest)) if is_format2(manifest) else {}
    return {"version": int(manifest["version"]), "path": svc.storage.relative(directory),
            "vectors": int(manifest["vectors"]), "model": manifest.get("model", ""), "dim": int(manifest["dim"]),
            "kind": manifest.get("kind", ""), "built_at": float(manifest.get("built_at") or 0),
            "documents": int(manifest.get("documents") or 0), "changes": changes,
            "checksum": manifest.get("checksum", ""), "by_type": json.dumps(by_type)}


def _changes_at(found: Found, order: list[int], changes_after: list[int], built_from: list[int]) -> int:
    """The change counter when the version was built: after its segments when they head the list (or
    after the compacted segment made of exactly them); 0 when that cannot be told."""
    if built_from and order[:len(built_from)] == built_from:
        return changes_after[len(built_from) - 1]
    if built_from and order and found.segments[order[0]].get("compacted_from") == built_from:
        return changes_after[0]
    return 0


def adopt_collection(svc: Services, name: str) -> dict:
    """Register collection `name` from what the data dir holds of it, unless Redis knows it already
    (then nothing is written: "skipped"). Returns what was done, for a job result."""
    svc.storage.check_collection(name)
    if svc.collections.exists(name):
        return {"collection": name, "skipped": "the collection exists"}
    found = scan(svc, name)
    order = segment_order(found)
    docs, chunks, changes_after = replay(svc, name, order, found)
    history = []
    for version, directory, manifest in found.versions:
        built_from = [int(s) for s in manifest.get("segments") or []]
        record = pointer_of(svc, name, directory, manifest, _changes_at(found, order, changes_after, built_from))
        history.append({**record, "collection": name, "fence": version, "published_at": record["built_at"]})
    history = history[-svc.settings.versions_keep:] if svc.settings.versions_keep > 0 else history
    pointer = history[-1] if history else None
    created = [float(m["created_at"]) for m in found.segments.values() if m.get("created_at")]
    fields = {"created_at": min(created) if created else time.time(), "chunks": chunks,
              "changes": changes_after[-1] if changes_after else 0}
    if pointer:
        fields["last_rebuild_at"] = pointer["built_at"]
    state = {"fields": fields, "docs": docs, "segments": order, "segseq": found.highest_segment,
             "fence": found.highest_fence, "history": [json.dumps(h) for h in history],
             "pointer": {k: v for k, v in pointer.items()} if pointer else None}
    outcome = svc.collections.adopt(name, state)
    if outcome != 1:
        return {"collection": name, "skipped": "the collection exists" if outcome == 0 else "a drop of it runs"}
    sources = _adopt_sources(svc, name)
    _adopt_config(svc, name)
    result = {"collection": name, "version": pointer["version"] if pointer else None,
              "versions": len(history), "refused_versions": found.refused, "segments": len(order),
              "documents": len(docs), "chunks": chunks, "sources": sources, "fence": found.highest_fence}
    log.info("event=fromdisk.adopted collection=%s version=%s versions=%s refused=%s segments=%s documents=%s "
             "sources=%s", name, result["version"], len(history), len(found.refused), len(order), len(docs), sources)
    return result


def _adopt_sources(svc: Services, name: str) -> int:
    adopted = 0
    for record in svc.storage.read_sources(name):
        if not is_job_id(record.get("id")) or not isinstance(record.get("path"), str):
            log.warning("event=fromdisk.source_skipped collection=%s record=%r", name, str(record)[:200])
            continue
        if svc.sources.get(record["id"]) is not None:
            continue  # a source of that id exists (of another collection): never overwritten
        svc.sources.adopt({**record, "collection": name})
        adopted += 1
    return adopted


def recover_from_disk(svc: Services, job_id: str | None = None) -> dict:
    """Adopt every collection of the data dir that Redis does not know. Embeds nothing."""
    names_ = svc.storage.collections_on_disk()
    done: list[dict] = []
    for i, name in enumerate(names_):
        if job_id:
            svc.jobs.progress(job_id, names.STAGE_VERIFY, i, len(names_))
        done.append(adopt_collection(svc, name))
    adopted = [d for d in done if "skipped" not in d]
    return {"collections": done, "recovered": len(adopted), "skipped": len(done) - len(adopted),
            "versions": sum(d["versions"] for d in adopted),
            "refused_versions": sum(len(d["refused_versions"]) for d in adopted),
            "segments": sum(d["segments"] for d in adopted), "documents": sum(d["documents"] for d in adopted),
            "sources": sum(d["sources"] for d in adopted), "embedded": 0}


def run_recover(svc: Services, job_id: str) -> None:
    """The `recover` job: `recover_from_disk`, its counts as the result."""
    raw = svc.jobs.raw(job_id)
    if raw["state"] in TERMINAL or not svc.jobs.start(job_id):
        return
    result = recover_from_disk(svc, job_id)
    svc.jobs.succeed(job_id, result)
    log.info("event=fromdisk.done job=%s recovered=%s skipped=%s versions=%s", job_id, result["recovered"],
             result["skipped"], result["versions"])
