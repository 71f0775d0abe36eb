"""Markdown-aware chunking.

ATX headings `#` to `######` open sections; each chunk keeps its heading path (the titles of the
enclosing headings, outermost first). A section longer than `max_tokens` is split into windows of at
most `max_tokens` tokens that overlap by `overlap` tokens. Tokens are counted as words and punctuation
marks, which tracks MiniLM's word pieces closely enough when the cap leaves headroom (200 of 256).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Chunk:
    text: str
    heading_path: tuple[str, ...] = field(default_factory=tuple)
    ordinal: int = 0

    @property
    def content_hash(self) -> str:
        """Identifies the text the embedder sees (heading path included), for reusing vectors."""
        return hashlib.sha256(embed_text(self).encode("utf-8")).hexdigest()[:32]


def count_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


def embed_text(chunk: Chunk) -> str:
    """What gets embedded: the heading path gives a chunk its context."""
    if chunk.heading_path:
        return " > ".join(chunk.heading_path) + "\n" + chunk.text
    return chunk.text


def _sections(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """Split markdown into (heading_path, body lines); headings inside code fences are not headings."""
    sections: list[tuple[tuple[str, ...], list[str]]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = None

    def flush():
        sections.append((tuple(title for _, title in path), body.copy()))
        body.clear()

    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            marker = fence.group(1)
            in_fence = None if in_fence == marker else (in_fence or marker)
        match = None if in_fence or fence else HEADING.match(line)
        if match:
            flush()
            level, title = len(match.group(1)), (match.group(2) or "").strip()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, title))
            continue
        body.append(line)
    flush()
    return sections


def _windows(text: str, max_tokens: int, overlap: int) -> list[str]:
    spans = [m.span() for m in TOKEN.finditer(text)]
    if len(spans) <= max_tokens:
        return [text.strip()]
    step = max(1, max_tokens - overlap)
    out = []
    for start in range(0, len(spans), step):
        window = spans[start:start + max_tokens]
        out.append(text[window[0][0]:window[-1][1]].strip())
        if start + max_tokens >= len(spans):
            break
    return out


def chunk_markdown(text: str, max_tokens: int = 200, overlap: int = 40) -> list[Chunk]:
    """Chunks of a markdown document, in document order. Empty sections produce no chunk."""
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError("need max_tokens >= 1 and 0 <= overlap < max_tokens")
    chunks: list[Chunk] = []
    for heading_path, lines in _sections(text):
        body = "\n".join(lines).strip()
        if not body:
            continue
        for piece in _windows(body, max_tokens, overlap):
            chunks.append(Chunk(piece, heading_path, len(chunks)))
    return chunks
