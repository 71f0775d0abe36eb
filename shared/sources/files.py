"""Reading a source's files: the checks that decide whether a file's content can be indexed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from shared.sources.filetypes import classify

BINARY_SNIFF = 8192


def read_file(path: Path) -> tuple[os.stat_result, bytes]:
    """The file's stat (taken before reading, so a write during the read shows as a change next time)
    and its bytes."""
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        return info, fh.read()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_problem(data: bytes, max_bytes: int) -> tuple[str | None, str | None]:
    """(reason it cannot be indexed, or None; the text when it can)."""
    if len(data) > max_bytes:
        return "too_large", None
    if b"\x00" in data[:BINARY_SNIFF]:
        return "binary", None
    try:
        return None, data.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", None


def document(source: dict, rel: str, text: str) -> dict:
    """A file as a document: id = the source's prefix + the path relative to the source; metadata
    names the source, the path, the type and, for code, the language."""
    kind, language = classify(rel)
    metadata = {"source": source["id"], "path": rel, "type": kind}
    if language:
        metadata["language"] = language
    return {"id": source.get("prefix", "") + rel, "text": text, "metadata": metadata}
