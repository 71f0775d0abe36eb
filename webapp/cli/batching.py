"""Turning files into documents and documents into request-sized batches, on the client side."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Under the API's defaults (1,000 documents, 32 MiB per request, 1 MiB per document) with room to spare,
# and small enough that one batch is one job of a few seconds to a minute with the real model.
DEFAULT_BATCH_DOCS = 50
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_DOC_BYTES = 1024 * 1024


class InputError(Exception):
    """The files given cannot be turned into documents (nothing matched, clashing ids)."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    doc_id: str
    source: str


def find_files(paths: Iterable[str | Path], glob: str = "*.md") -> list[SourceFile]:
    """Files to ingest. A directory contributes the files under it matching `glob` (hidden folders
    skipped), with ids relative to it, so ingesting the same folder from anywhere gives the same ids; a
    file named directly is taken whatever its name, with its path as given for id."""
    found: list[SourceFile] = []
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            for path in sorted(root.rglob(glob)):
                rel = path.relative_to(root)
                if path.is_file() and not any(part.startswith(".") for part in rel.parts[:-1]):
                    found.append(SourceFile(path, rel.as_posix(), _display(path)))
        elif root.is_file():
            doc_id = (root.name if root.is_absolute()
                      else Path(*[p for p in root.parts if p != "."]).as_posix())
            found.append(SourceFile(root, doc_id, _display(root)))
        else:
            raise InputError(f"{raw}: no such file or directory")
    if not found:
        raise InputError(f"no files matching {glob!r} under {', '.join(map(str, paths))}")
    seen: dict[str, Path] = {}
    for item in found:
        if item.doc_id in seen:
            raise InputError(f"two files map to document id {item.doc_id!r}: "
                             f"{seen[item.doc_id]} and {item.path}")
        seen[item.doc_id] = item.path
    return found


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path.resolve())


def read_documents(files: Iterable[SourceFile], max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
                   skipped: list[str] | None = None) -> Iterator[dict]:
    """Documents read lazily, one file at a time. Files the API would refuse (too large, not UTF-8)
    are left out and named in `skipped` with the reason."""
    for item in files:
        data = item.path.read_bytes()
        if len(data) > max_doc_bytes:
            _note(skipped, f"{item.source}: {len(data)} bytes is over the {max_doc_bytes}-byte limit")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            _note(skipped, f"{item.source}: not UTF-8 text")
            continue
        yield {"id": item.doc_id, "text": text, "metadata": {"source": item.source}}


def _note(skipped: list[str] | None, line: str) -> None:
    if skipped is not None:
        skipped.append(line)


def doc_bytes(doc: dict) -> int:
    """Size of a document inside the JSON request body."""
    return len(json.dumps(doc, ensure_ascii=False).encode("utf-8")) + 2


def make_batches(documents: Iterable[dict], max_docs: int = DEFAULT_BATCH_DOCS,
                 max_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[list[dict]]:
    """Consecutive batches of at most `max_docs` documents and about `max_bytes` of JSON each (a
    single document larger than `max_bytes` still goes, alone)."""
    batch: list[dict] = []
    size = 0
    for doc in documents:
        n = doc_bytes(doc)
        if batch and (len(batch) >= max_docs or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(doc)
        size += n
    if batch:
        yield batch
