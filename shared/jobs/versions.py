"""Index versions of a collection: the listing, rollback through the fenced publish, and collection
of versions that nobody serves and that are not among the last K published."""

from __future__ import annotations

import logging
import re
import shutil
import uuid

from shared.index.parts import unreferenced_parts, verify_version
from shared.index.vectorindex import VerifyFailed
from shared.services import Services
from shared.store.pointers import PublishRefused

log = logging.getLogger(__name__)
VERSION_DIR = re.compile(r"^v(\d+)$")


class RollbackRefused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def list_versions(svc: Services, name: str) -> list[dict]:
    """The last K published versions, newest publish first, each once."""
    pointer = svc.pointers.get(name)
    served = [versions.get(name) for versions in svc.replicas.versions().values()]
    out, seen = [], set()
    for entry in svc.pointers.history(name):
        version = entry["version"]
        if version in seen:
            continue
        seen.add(version)
        out.append({
            "version": version, "vectors": entry.get("vectors"), "documents": entry.get("documents"),
            "model": entry.get("model"), "kind": entry.get("kind"), "built_at": entry.get("built_at"),
            "published_at": entry.get("published_at"),
            "current": pointer is not None and pointer["version"] == version,
            "on_disk": svc.storage.version_dir(name, version).is_dir(),
            "served_by": sum(1 for v in served if v == version),
        })
    return out


def kept_versions(svc: Services, name: str) -> dict[int, dict]:
    """The versions a read may ask for: the pointer history's (what `list_versions` lists), newest
    publish first, each once, as version -> its pointer record."""
    kept: dict[int, dict] = {}
    for entry in svc.pointers.history(name):
        kept.setdefault(entry["version"], entry)
    return kept


def rollback(svc: Services, name: str, version: int) -> dict | None:
    """Publish an older version again, with a new fence, so every API process swaps back to it; returns
    the pointer now published (None if the collection was dropped meanwhile)."""
    entry = next((e for e in svc.pointers.history(name) if e["version"] == version), None)
    if entry is None:
        raise RollbackRefused(404, "version_not_found", f"version {version} is not among the kept versions")
    pointer = svc.pointers.get(name)
    if pointer and pointer["version"] == version:
        raise RollbackRefused(409, "already_current", f"version {version} is already served")
    try:
        verify_version(svc.storage.version_dir(name, version))
    except (OSError, VerifyFailed) as exc:
        raise RollbackRefused(409, "version_unusable", f"version {version} cannot be loaded: {exc}") from exc
    lease = svc.locks.acquire(name, f"rollback{uuid.uuid4().hex[:8]}")
    if lease is None:
        raise RollbackRefused(409, "rebuild_in_progress", "a rebuild holds the collection's lock; retry after it")
    try:
        record = {k: v for k, v in entry.items() if k not in ("fence", "published_at", "collection")}
        svc.pointers.publish(lease, {**record, "rolled_back_from": pointer["version"] if pointer else 0})
    except PublishRefused as exc:
        raise RollbackRefused(409, "publish_refused", f"publish refused: {exc.reason}") from exc
    finally:
        svc.locks.release(lease)
    log.info("event=rollback collection=%s version=%s fence=%s", name, version, lease.fence)
    return svc.pointers.get(name)


def collect_versions(svc: Services, name: str) -> list[int]:
    """Delete version directories that are not among the last K published, not current, not served
    by any live API process and not leased by any (a paused one included), then the parts no remaining
    version directory references.
    Directories and parts newer than the published pointer belong to a build that has not published
    yet and are left alone."""
    pointer = svc.pointers.get(name)
    if pointer is None:
        return []
    keep = {entry["version"] for entry in svc.pointers.history(name)} | {pointer["version"]}
    keep |= {versions[name] for versions in svc.replicas.versions().values() if name in versions}
    keep |= svc.replicas.leased(name)
    newest_published = max(keep)
    parent = svc.storage.indexes_dir(name)
    deleted = []
    for child in sorted(parent.iterdir()) if parent.is_dir() else []:
        match = VERSION_DIR.match(child.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in keep or version > newest_published:
            continue
        shutil.rmtree(child, ignore_errors=True)
        deleted.append(version)
    parts = unreferenced_parts(parent, newest_published)
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)
    if deleted or parts:
        log.info("event=versions.collected collection=%s deleted=%s parts=%s", name, deleted, [p.name for p in parts])
    return deleted
