"""One entry point for chunking a document by its type: markdown (and plain text) by headings and
blocks, code by definitions. The type comes from the document's metadata (`type`, `language`): sources
set them from file names; documents posted without them are markdown."""

from __future__ import annotations

from dataclasses import replace

from shared.index.chunking import Chunk, FrontMatterRefused, chunk_markdown, parse_front_matter
from shared.index.codechunks import chunk_code
from shared.index.tokens import Tokenizer


def chunk_document(text: str, metadata: dict, tokenizer: Tokenizer, max_tokens: int,
                   overlap: int) -> tuple[list[Chunk], dict]:
    """(chunks, metadata to add to the document's): YAML front matter of markdown goes to metadata
    under `front_matter`, not into chunk text. Front matter that is refused (anchors or aliases, over
    MAX_FRONT_MATTER_BYTES) is left out of both; `front_matter_refused` says why."""
    cap = min(max_tokens, tokenizer.max_tokens or max_tokens)
    overlap = min(overlap, cap - 1)
    doc_type = metadata.get("type")
    if doc_type == "code":
        return chunk_code(text, metadata.get("language"), cap, overlap, tokenizer), {}
    extra: dict = {}
    original = text
    if doc_type in (None, "markdown"):
        try:
            front, text = parse_front_matter(text)
        except FrontMatterRefused as refused:
            front, text = None, refused.rest
            extra["front_matter_refused"] = str(refused)
        if front:
            extra["front_matter"] = front
    skipped = len(original[:len(original) - len(text)].splitlines())  # lines of a front matter block
    chunks = chunk_markdown(text, cap, overlap, tokenizer)
    if skipped:
        chunks = [replace(c, lines=(c.lines[0] + skipped, c.lines[1] + skipped)) if c.lines else c for c in chunks]
    return chunks, extra
