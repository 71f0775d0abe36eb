"""Whether the files behind search hits changed on disk since they were indexed, checked when answering
(never cached). A hit whose metadata names a source and a path is compared, by size and mtime, with the
file as the version that answered read it (`file_size`, `file_mtime_ns` in its metadata), so a hit of an
older version, or of one served while a newer read waits for its rebuild, is stale when it should be.
A file whose stat moved but whose content the collection has since read again with the same digest
(touched, not edited) is not stale. Versions built before that metadata existed are compared with what
the collection last recorded of the file."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from shared.names import is_job_id
from shared.settings import Settings
from shared.sources.files import stat_in_source
from shared.sources.paths import SourcePathRefused, check_source_root
from shared.store.sources import FileState, SourceStore

log = logging.getLogger(__name__)

MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class IndexedFile:
    """A source file as a hit names it: which file, and how it was when the answering version read it
    (None: a version older than that metadata)."""

    source_id: str
    path: str
    read: tuple[int, int, str] | None  # (size, mtime_ns, sha256)


def _read_state(meta: dict) -> tuple[int, int, str] | None:
    size, mtime_ns, sha = meta.get("file_size"), meta.get("file_mtime_ns"), meta.get("file_sha256")
    if not isinstance(size, int) or not isinstance(mtime_ns, str) or not mtime_ns.isdigit() \
            or len(mtime_ns) > 24 or not isinstance(sha, str) or len(sha) != 64:
        return None
    return size, int(mtime_ns), sha


def _source_file(hit: dict) -> IndexedFile | None:
    """The source file the hit's metadata names, when it looks like what a source writes (metadata is
    the client's too: anything else is not looked up)."""
    meta = hit.get("metadata")
    if not isinstance(meta, dict):
        return None
    source_id, path = meta.get("source"), meta.get("path")
    if not isinstance(source_id, str) or not is_job_id(source_id) or not isinstance(path, str) \
            or not 0 < len(path) <= MAX_PATH_CHARS or "\x00" in path:
        return None
    return IndexedFile(source_id, path, _read_state(meta))


def _stale(now_size: int, now_mtime: int, read: tuple[int, int, str] | None, held: FileState) -> bool:
    now = (now_size, now_mtime)
    if read is None:  # an older version: what the collection last recorded is all there is
        return now != (held.size, held.mtime_ns)
    size, mtime_ns, sha = read
    if now == (size, mtime_ns):
        return False
    # The stat moved. Not stale when the collection has read the file as it is now and found the content
    # the answering version holds (a touch, or an edit undone).
    return not (now == (held.size, held.mtime_ns) and held.digest == sha)


def stale_flags(store: SourceStore, settings: Settings, collection: str,
                files: set[IndexedFile]) -> dict[IndexedFile, bool | None]:
    """For each file: True when it differs from what the answering version read, or is gone; False when
    not; None when it cannot be told (not a source of this collection, a file it holds nothing of, a
    folder outside the roots or unreachable, Redis down). One Redis round trip."""
    wanted: dict[str, list[str]] = {}
    for f in files:
        paths = wanted.setdefault(f.source_id, [])
        if f.path not in paths:
            paths.append(f.path)
    flags: dict[IndexedFile, bool | None] = dict.fromkeys(files)
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
        by_path = dict(zip(wanted[source_id], states, strict=True))
        for f in sorted((f for f in files if f.source_id == source_id), key=lambda f: f.path):
            state = by_path[f.path]
            if state is None:
                continue
            try:
                info = stat_in_source(root, f.path)
            except OSError as exc:  # the folder itself: unmounted, removed, unreadable
                log.info("stale check: source folder unreachable source=%s error=%s", source_id, exc)
                break
            flags[f] = info is None or _stale(info.st_size, info.st_mtime_ns, f.read, state)
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
