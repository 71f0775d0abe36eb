"""Reading a source's files: the checks that decide whether a file's content can be indexed."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from pathlib import Path
from typing import NamedTuple

from shared.sources.filetypes import classify
from shared.sources.paths import rel_parts
from shared.sources.secrets import holds_secret
from shared.store.sources import FileState

BINARY_SNIFF = 8192
MAX_LINK_HOPS = 8  # symlinked files inside the source, followed by hand, each hop checked
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Read(NamedTuple):
    info: os.stat_result | None  # fstat of the opened file, taken before reading
    data: bytes | None  # None when `problem` is set
    problem: str | None = None  # symlink_outside, not_regular, too_large, too_many_links


def _open_beneath(root_fd: int, rel: str, hops: int = 0, follow: bool = True) -> tuple[int | None, str | None]:
    """An fd for `rel` opened folder by folder from root_fd, never following a symlinked folder (a folder
    swapped for a link after a check is refused, ELOOP/ENOTDIR). A symlinked file is followed by hand
    when its target, taken lexically, stays inside the root; each hop is opened the same way."""
    parts = rel_parts(rel)
    if parts is None:
        return None, "symlink_outside"
    fds = []
    try:
        cur = root_fd
        for name in parts[:-1]:
            try:
                cur = os.open(name, _DIR_FLAGS, dir_fd=cur)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    return None, "symlink_outside"
                raise
            fds.append(cur)
        try:
            return os.open(parts[-1], _FILE_FLAGS, dir_fd=cur), None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        if not follow:
            return None, "symlink"
        if hops >= MAX_LINK_HOPS:
            return None, "too_many_links"
        target = os.readlink(parts[-1], dir_fd=cur)
        if target.startswith("/"):
            return None, "symlink_outside"  # absolute links are refused rather than mapped onto the root
        joined = posixpath.normpath(posixpath.join("/".join(parts[:-1]), target))
        if joined.startswith("../") or joined in ("..", "."):
            return None, "symlink_outside"
        return _open_beneath(root_fd, joined, hops + 1)
    finally:
        for fd in fds:
            os.close(fd)


def read_in_source(folder: Path, rel: str, max_bytes: int, follow: bool = True) -> Read:
    """The bytes of the regular file at `rel` under a source folder, opened without following a symlink
    out of it, and never more than `max_bytes` of them: the size is checked (fstat) before reading and
    the read is bounded, so /dev/zero, a FIFO, a socket or an 8 GiB file cost nothing. FileNotFoundError
    when the file is gone. With `follow` false a symlinked file is refused too (problem "symlink")."""
    root_fd = os.open(folder, _DIR_FLAGS)
    try:
        fd, problem = _open_beneath(root_fd, rel, follow=follow)
    finally:
        os.close(root_fd)
    if fd is None:
        return Read(None, None, problem)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Read(info, None, "not_regular")
        if info.st_size > max_bytes:
            return Read(info, None, "too_large")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew since the fstat
            return Read(info, None, "too_large")
        return Read(info, data)


def stat_in_source(folder: Path, rel: str) -> os.stat_result | None:
    """The fstat of the file at `rel` under a source folder, opened as `read_in_source` opens it (never
    through a link leading out of the folder, nothing read); None when it is gone or refused. OSError
    when the folder itself cannot be opened."""
    root_fd = os.open(folder, _DIR_FLAGS)
    try:
        fd, _problem = _open_beneath(root_fd, rel)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    if fd is None:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_problem(data: bytes, max_bytes: int) -> tuple[str | None, str | None]:
    """(reason it cannot be indexed, or None; the text when it can). A file holding a credential
    (`shared.sources.secrets`) is `secret`: never embedded, so never returned by a search."""
    if len(data) > max_bytes:
        return "too_large", None
    if b"\x00" in data[:BINARY_SNIFF]:
        return "binary", None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", None
    if holds_secret(text):
        return "secret", None
    return None, text


def document(source: dict, rel: str, text: str, indexed_at: str | None = None,
             source_commit: str | None = None, read: FileState | None = None) -> dict:
    """A file as a document: id = the source's prefix + the path relative to the source; metadata
    names the source, the path, the type and, for code, the language; when it was read (`indexed_at`,
    ISO-8601 UTC) and, in a git work tree, the HEAD commit then (`source_commit`; the file may hold
    uncommitted edits on top of it); the file as it was read (`read`: `file_size`, `file_mtime_ns` (a
    string: nanoseconds pass 2^53) and `file_sha256`), which a hit's `stale` is checked against."""
    kind, language = classify(rel)
    metadata = {"source": source["id"], "path": rel, "type": kind}
    if language:
        metadata["language"] = language
    if source_commit:
        metadata["source_commit"] = source_commit
    if indexed_at:
        metadata["indexed_at"] = indexed_at
    if read is not None:
        metadata.update(file_size=read.size, file_mtime_ns=str(read.mtime_ns), file_sha256=read.digest)
    return {"id": source.get("prefix", "") + rel, "text": text, "metadata": metadata}
