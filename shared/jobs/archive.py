"""The snapshot archive: one uncompressed tar of a collection's served version, the parts it
references and its segments, with `snapshot.json` (the last member) giving the sha256 and size of
every other member.

Layout (nothing else is accepted):
    indexes/v{N}/manifest.json, indexes/v{N}/deleted-p{M}.npy       the version
    indexes/parts/p{M}/part.json, indexes/parts/p{M}/<name>.{faiss,arrow,npy}   its parts
    segments/{seq:010d}/{chunks.jsonl,vectors.npy,meta.json}        the segment list's segments
    snapshot.json                                                   format, collection, version, ...

`check_and_extract` reads an archive from anyone (an upload) as hostile: before a byte is written it
refuses links, devices, directories and any member whose name is outside the layout (so no absolute
path and no `..`), duplicate names, more members or bytes than the bounds, and an inner manifest that
does not list exactly the other members; then it extracts each member to its checked name inside the
destination, hashing as it writes, and refuses a member whose size or sha256 differs. A truncated
archive fails one of these (its last member, the inner manifest, is missing or short).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

from shared.names import is_collection_name
from shared.storage import written

FORMAT = 1
INNER = "snapshot.json"
INNER_MAX_BYTES = 64 * 1024 * 1024
MAX_MEMBERS = 50_000
CHUNK = 1024 * 1024
MEMBER = re.compile(
    r"indexes/v\d{1,18}/(manifest\.json|deleted-p\d{1,18}\.npy)"
    r"|indexes/parts/p\d{1,18}/(part\.json|[a-z_]{1,64}\.(faiss|arrow|npy))"
    r"|segments/\d{10}/(chunks\.jsonl|vectors\.npy|meta\.json)")
SHA256 = re.compile(r"[0-9a-f]{64}")


class ArchiveRefused(ValueError):
    """The archive is not a complete, intact snapshot archive; nothing was kept of it."""


class _Hashing:
    """A file object that hashes and counts what passes through it (read side or write side)."""

    def __init__(self, fh, reading: bool):
        self.fh, self.digest, self.count = fh, hashlib.sha256(), 0
        if reading:
            self.read = self._read
        else:
            self.write = self._write

    def _read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data

    def _write(self, data: bytes) -> int:
        self.fh.write(data)
        self.digest.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def write_archive(path: Path, members: Iterable[tuple[str, Path]], inner: dict) -> tuple[str, int, dict]:
    """Write the archive to `path` (a temporary name: flushed and fsynced here, renamed by the caller):
    every (name, file) of `members`, then `snapshot.json` = `inner` plus each member's sha256 and size.
    Returns (sha256 of the whole archive, its size, the inner manifest)."""
    listed: dict[str, dict] = {}
    with written(path, "a snapshot archive") as fh:
        out = _Hashing(fh, reading=False)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name, source in members:
                if not MEMBER.fullmatch(name) or name in listed:
                    raise ValueError(f"not a member name of the layout: {name!r}")
                with open(source, "rb") as src:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = source.stat().st_size, int(time.time()), 0o644
                    reader = _Hashing(src, reading=True)
                    tar.addfile(info, reader)
                    if reader.count != info.size:
                        raise ValueError(f"{source} changed while it was archived")
                listed[name] = {"sha256": reader.digest.hexdigest(), "bytes": reader.count}
            manifest = {**inner, "format": FORMAT, "members": listed}
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(INNER)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, _Bytes(data))
    return out.digest.hexdigest(), out.count, manifest


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.at + size
        chunk, self.at = self.data[self.at:end], min(end, len(self.data))
        return chunk


def _inner(tar: tarfile.TarFile, info: tarfile.TarInfo, names: set[str]) -> dict:
    if info.size > INNER_MAX_BYTES:
        raise ArchiveRefused(f"{INNER} is larger than {INNER_MAX_BYTES} bytes")
    fh = tar.extractfile(info)
    assert fh is not None  # a regular file
    try:
        manifest = json.loads(fh.read())
    except ValueError as exc:
        raise ArchiveRefused(f"{INNER} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveRefused(f"{INNER} is not a snapshot manifest of format {FORMAT}")
    if not is_collection_name(manifest.get("collection")) or not isinstance(manifest.get("version"), int):
        raise ArchiveRefused(f"{INNER} names no collection or version")
    members = manifest.get("members")
    if not isinstance(members, dict) or set(members) != names:
        listed = set(members or {})
        raise ArchiveRefused(f"{INNER} does not list exactly the archive's members (unlisted: "
                             f"{sorted(names - listed)[:5]}, missing: {sorted(listed - names)[:5]})")
    for name, facts in members.items():
        if not isinstance(facts, dict) or not isinstance(facts.get("sha256"), str) \
                or not SHA256.fullmatch(facts["sha256"]) or not isinstance(facts.get("bytes"), int):
            raise ArchiveRefused(f"{INNER} describes {name!r} without its sha256 and size")
    if f"indexes/v{manifest['version']}/manifest.json" not in names:
        raise ArchiveRefused(f"the archive holds no manifest of version {manifest['version']}")
    return manifest


# tarfile reads an extended (pax) or GNU long-name header whole into memory, whatever size it claims:
# one past this is refused before it is read (ours hold a few short names).
MAX_HEADER_BYTES = 64 * 1024
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes (at most {MAX_HEADER_BYTES})")
        return super()._proc_member(tarfile_)


def check_and_extract(path: Path, dest: Path, max_bytes: int) -> dict:
    """Check the archive at `path` and extract it into `dest` (an empty folder the caller removes on
    failure); returns its inner manifest. Raises ArchiveRefused, saying why, for anything but a
    complete, intact archive of the layout."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ArchiveRefused(f"the archive holds {size} bytes, more than {max_bytes} (SWAPLINE_MAX_SNAPSHOT_BYTES)")
    try:
        with tarfile.open(path, mode="r:", tarinfo=_BoundedTarInfo) as tar:
            infos: list[tarfile.TarInfo] = []
            names: set[str] = set()
            total, inner_info = 0, None
            for info in tar:
                if len(infos) >= MAX_MEMBERS:
                    raise ArchiveRefused(f"the archive holds more than {MAX_MEMBERS} members")
                if not info.isreg():
                    raise ArchiveRefused(f"member {info.name[:200]!r} is not a regular file (links, devices and "
                                         f"folders are refused)")
                if info.name in names or (info.name == INNER and inner_info is not None):
                    raise ArchiveRefused(f"member {info.name[:200]!r} appears twice")
                total += info.size
                if info.size > max_bytes or total > max_bytes:
                    raise ArchiveRefused(f"the members hold more than {max_bytes} bytes")
                if info.name == INNER:
                    inner_info = info
                    continue
                if not MEMBER.fullmatch(info.name):
                    raise ArchiveRefused(f"member {info.name[:200]!r} is outside the snapshot layout")
                infos.append(info)
                names.add(info.name)
            if inner_info is None:
                raise ArchiveRefused(f"the archive has no {INNER} (truncated, or not a snapshot archive)")
            manifest = _inner(tar, inner_info, names)
            for info in infos:
                _extract(tar, info, dest, manifest["members"][info.name])
    except (tarfile.TarError, EOFError, OSError, UnicodeError) as exc:
        raise ArchiveRefused(f"not a complete snapshot archive: {type(exc).__name__}: {exc}") from exc
    return manifest


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, facts: dict) -> None:
    if info.size != facts["bytes"]:
        raise ArchiveRefused(f"member {info.name!r} holds {info.size} bytes, {INNER} says {facts['bytes']}")
    target = dest.joinpath(*info.name.split("/"))  # a name of the layout: relative, no `..`
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(info)
    assert src is not None  # a regular file
    digest, count = hashlib.sha256(), 0
    with written(target, "a restored snapshot") as fh:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            count += len(chunk)
            fh.write(chunk)
    if count != facts["bytes"] or digest.hexdigest() != facts["sha256"]:
        raise ArchiveRefused(f"checksum mismatch: member {info.name!r} is not the file {INNER} describes")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
