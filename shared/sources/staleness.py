"""Whether the files behind search hits changed on disk since they were indexed, checked when answering
(never cached): a hit whose metadata names a source and a path is compared, by size and mtime, with
what the collection recorded of that file when it read it."""

from __future__ import annotations

import logging

import redis

from shared.names import is_job_id
from shared.settings import Settings
from shared.sources.files import stat_in_source
from shared.sources.paths import SourcePathRefused, check_source_root
from shared.store.sources import SourceStore

log = logging.getLogger(__name__)

MAX_PATH_CHARS = 4096


def _source_file(hit: dict) -> tuple[str, str] | None:
    """(source id, relative path) the hit's metadata names, when both look like what a source writes
    (metadata is the client's too: anything else is not looked up)."""
    meta = hit.get("metadata")
    if not isinstance(meta, dict):
        return None
    source_id, path = meta.get("source"), meta.get("path")
    if not isinstance(source_id, str) or not is_job_id(source_id) or not isinstance(path, str) \
            or not 0 < len(path) <= MAX_PATH_CHARS or "\x00" in path:
        return None
    return source_id, path


def stale_flags(store: SourceStore, settings: Settings, collection: str,
                files: set[tuple[str, str]]) -> dict[tuple[str, str], bool | None]:
    """For each (source id, path): True when the file's size or mtime differs from what the collection
    holds of it, or it is gone; False when equal; None when it cannot be told (not a source of this
    collection, a file it holds nothing of, a folder outside the roots or unreachable, Redis down).
    One Redis round trip."""
    wanted: dict[str, list[str]] = {}
    for source_id, path in sorted(files):
        wanted.setdefault(source_id, []).append(path)
    flags: dict[tuple[str, str], bool | None] = dict.fromkeys(files)
    try:
        held = store.held_states(wanted)
    except redis.RedisError:
        return flags
    for source_id, (owner, folder, states) in held.items():
        if owner != collection or not folder:
            continue
        try:
            root = check_source_root(settings, folder)
        except SourcePathRefused:
            continue
        for path, state in zip(wanted[source_id], states, strict=True):
            if state is None:
                continue
            try:
                info = stat_in_source(root, path)
            except OSError as exc:  # the folder itself: unmounted, removed, unreadable
                log.info("stale check: source folder unreachable source=%s error=%s", source_id, exc)
                break
            flags[(source_id, path)] = info is None or (info.st_size, info.st_mtime_ns) != (state.size, state.mtime_ns)
    return flags


def mark_stale(store: SourceStore, settings: Settings, collection: str, hits: list[dict]) -> list[dict] | None:
    """Copies of `hits` with `stale` on each hit of a source document (see stale_flags); None when no
    hit names a source file (then nothing was looked up)."""
    named = [_source_file(hit) for hit in hits]
    files = {f for f in named if f is not None}
    if not files:
        return None
    flags = stale_flags(store, settings, collection, files)
    return [hit if f is None else {**hit, "stale": flags[f]} for hit, f in zip(hits, named, strict=True)]
