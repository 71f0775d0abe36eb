"""Chunking, with caps counted by the model's own tokenizer (`shared.index.tokens`).

Markdown: ATX headings `#` to `######` open sections; each chunk keeps its heading path (the titles of
the enclosing headings, outermost first). A section is cut into blocks (paragraphs, and code fences
kept whole) and consecutive blocks are packed into chunks up to the cap; a block longer than the cap
is cut into windows that overlap by `overlap` tokens (a fence into windows of whole lines). YAML front
matter becomes metadata, not chunk text. Code: see `shared.index.codechunks`.

The cap counts what is embedded: the heading path that `embed_text` puts before the text and the
special tokens the model adds, so no chunk is ever cut short by the model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from shared.index.tokens import WORD_TOKEN, WORDS, Tokenizer

HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)
TOKEN = WORD_TOKEN  # kept for callers that count words
PATH_SEP = " > "
MAX_TITLE_CHARS = 200
# Front matter is metadata copied into every chunk of its document: a block past this is not read.
MAX_FRONT_MATTER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Chunk:
    text: str
    heading_path: tuple[str, ...] = field(default_factory=tuple)
    ordinal: int = 0
    lines: tuple[int, int] | None = None  # first and last line of the text in its document (1-based)

    @property
    def content_hash(self) -> str:
        """Identifies the text the embedder sees (heading path included), for reusing vectors."""
        return hashlib.sha256(embed_text(self).encode("utf-8")).hexdigest()[:32]


def count_tokens(text: str) -> int:
    return WORDS.count(text)


def embed_text(chunk: Chunk) -> str:
    """What gets embedded: the heading path gives a chunk its context."""
    if chunk.heading_path:
        return PATH_SEP.join(chunk.heading_path) + "\n" + chunk.text
    return chunk.text


def check_caps(max_tokens: int, overlap: int) -> None:
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError("need max_tokens >= 1 and 0 <= overlap < max_tokens")


class Budget:
    """The tokens left for chunk text under one heading path."""

    def __init__(self, tok: Tokenizer, cap: int, path: tuple[str, ...]):
        self.tok, self.cap = tok, cap
        self.path = fit_path(tok, cap, path)
        head = PATH_SEP.join(self.path) + "\n" if self.path else ""
        self.tokens = max(1, cap - tok.count(head))

    def cost(self, text: str) -> int:
        return self.tok.count(text) - self.tok.special

    def fits(self, text: str) -> bool:
        """The exact check, on what will be embedded."""
        return self.tok.count(embed_text(Chunk(text, self.path))) <= self.cap


def fit_path(tok: Tokenizer, cap: int, path: tuple[str, ...]) -> tuple[str, ...]:
    """The heading path, shortened (outer titles first, then words of the last one) to at most half
    the cap, so a chunk always has room for text."""
    path = tuple(title[:MAX_TITLE_CHARS] for title in path)
    limit = cap // 2
    while len(path) > 1 and tok.count(PATH_SEP.join(path)) > limit:
        path = path[1:]
    if path and tok.count(path[0]) > limit:
        words = tok.words(path[0])
        keep, used = 0, tok.special
        for _start, end, n in words:
            if used + n > limit:
                break
            keep, used = end, used + n
        path = (path[0][:keep],) if keep else ()
    return path


def windows(text: str, tok: Tokenizer, budget: int, overlap: int) -> list[str]:
    """Slices of `text` of at most `budget` tokens each, cut between words, consecutive slices sharing
    up to `overlap` tokens. A single word longer than the budget is cut by characters."""
    return [piece for _, piece in windows_at(text, tok, budget, overlap)]


def windows_at(text: str, tok: Tokenizer, budget: int, overlap: int) -> list[tuple[int, str]]:
    """`windows`, each slice with the offset in `text` where it starts (for its line numbers)."""
    words = tok.words(text)
    if sum(n for _, _, n in words) <= budget:
        return [_stripped_at(text, 0)] if text.strip() else []
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and used + words[end][2] <= budget:
            used += words[end][2]
            end += 1
        if end == start:  # one word over the budget
            s, e, n = words[start]
            step = max(1, (e - s) * budget // n)
            out.extend((i, text[i:min(i + step, e)]) for i in range(s, e, step))
            start += 1
            continue
        out.append(_stripped_at(text[words[start][0]:words[end - 1][1]], words[start][0]))
        if end >= len(words):
            break
        nxt, shared = end, 0
        while nxt - 1 > start and shared + words[nxt - 1][2] <= overlap:
            nxt -= 1
            shared += words[nxt][2]
        start = nxt
    return [(at, piece) for at, piece in out if piece]


def _stripped_at(piece: str, at: int) -> tuple[int, str]:
    """`piece` stripped, with the offset of what is left (`piece` starts at offset `at`)."""
    return at + len(piece) - len(piece.lstrip()), piece.strip()


def line_windows(lines: list[str], tok: Tokenizer, budget: int, overlap: int) -> list[tuple[int, int, str]]:
    """Whole lines packed into windows of at most `budget` tokens; consecutive windows repeat their
    last lines up to `overlap` tokens. Returns (first line index, last line index, text)."""
    costs = [tok.count(line) - tok.special for line in lines]
    out: list[tuple[int, int, str]] = []
    start = 0
    while start < len(lines):
        if costs[start] > budget:  # one line over the budget: cut it between words
            out.extend((start, start, piece) for piece in windows(lines[start], tok, budget, overlap))
            start += 1
            continue
        end, used = start, 0
        while end < len(lines) and used + costs[end] <= budget:
            used += costs[end]
            end += 1
        text = "\n".join(lines[start:end]).strip("\n")
        if text.strip():
            out.append((start, end - 1, text))
        if end >= len(lines):
            break
        nxt, shared = end, 0
        while nxt - 1 > start and shared + costs[nxt - 1] <= overlap:
            nxt -= 1
            shared += costs[nxt]
        start = nxt
    return out


def pack(units: list[tuple[int, int]], cost: Callable[[int, int], int], budget: int) -> list[tuple[int, int]]:
    """Consecutive units (start, end) grouped greedily while their summed cost fits `budget`; a unit
    over the budget stands alone (the caller cuts it). Returns (first unit, last unit) index pairs."""
    groups: list[tuple[int, int]] = []
    first, used = None, 0
    for i, (s, e) in enumerate(units):
        n = cost(s, e)
        if first is not None and (used + n > budget or n > budget):
            groups.append((first, i - 1))
            first, used = None, 0
        if first is None:
            first, used = i, 0
        used += n
    if first is not None:
        groups.append((first, len(units) - 1))
    return groups


class FrontMatterRefused(ValueError):
    """Front matter that is front matter by its shape but is not read: over MAX_FRONT_MATTER_BYTES, or
    with YAML anchors or aliases. `rest` is the text after the block."""

    def __init__(self, reason: str, rest: str = ""):
        super().__init__(reason)
        self.rest = rest


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses every anchor and alias: an alias is expanded wherever the metadata is
    serialized (in every chunk), so a few hundred bytes of `&a [*b, *b, ...]` became megabytes."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise FrontMatterRefused("YAML anchors and aliases are not accepted in front matter")
        return super().compose_node(parent, index)


def parse_front_matter(text: str) -> tuple[dict | None, str]:
    """(front matter, the text after it). None and the text unchanged when the text opens with no
    front matter, or with YAML that does not parse to a mapping. Raises FrontMatterRefused (its `rest`
    is the text after the block) for a block over MAX_FRONT_MATTER_BYTES or with anchors or aliases."""
    match = FRONT_MATTER.match(text)
    if not match:
        return None, text
    block, rest = match.group(1) or "", text[match.end():]
    if len(block.encode("utf-8")) > MAX_FRONT_MATTER_BYTES:
        raise FrontMatterRefused(f"front matter over {MAX_FRONT_MATTER_BYTES} bytes", rest)
    try:
        data = yaml.load(block, Loader=_NoAliasLoader)  # a SafeLoader subclass: no arbitrary objects
    except FrontMatterRefused as exc:
        raise FrontMatterRefused(str(exc), rest) from None
    except yaml.YAMLError:
        return None, text
    if not isinstance(data, dict):
        return None, text
    return {str(k): v for k, v in data.items()}, rest


def split_front_matter(text: str) -> tuple[dict | None, str]:
    """YAML front matter (a mapping between `---` lines at the very start) and the text after it.
    Anything else at the start, or YAML that does not parse to a mapping, stays text; a refused block
    (see parse_front_matter) is neither metadata nor text."""
    try:
        return parse_front_matter(text)
    except FrontMatterRefused as exc:
        return None, exc.rest


def _sections(text: str) -> list[tuple[tuple[str, ...], list[str], int]]:
    """Split markdown into (heading_path, body lines, index of the first body line in the text);
    headings inside code fences are not headings."""
    sections: list[tuple[tuple[str, ...], list[str], int]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = None
    body_start = 0

    def flush():
        sections.append((tuple(title for _, title in path), body.copy(), body_start))
        body.clear()

    for i, line in enumerate(text.splitlines()):
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
            body_start = i + 1
            continue
        body.append(line)
    flush()
    return sections


def _blocks(lines: list[str]) -> list[tuple[int, int, bool]]:
    """(first line, end line exclusive, is a fence) of each paragraph and each whole code fence."""
    blocks: list[tuple[int, int, bool]] = []
    start, in_fence = None, None
    for i, line in enumerate(lines):
        fence = FENCE.match(line)
        if in_fence:
            if fence and fence.group(1) == in_fence:
                assert start is not None  # set together with in_fence
                blocks.append((start, i + 1, True))
                start, in_fence = None, None
            continue
        if fence:
            if start is not None:
                blocks.append((start, i, False))
            start, in_fence = i, fence.group(1)
        elif not line.strip():
            if start is not None:
                blocks.append((start, i, False))
                start = None
        elif start is None:
            start = i
    if start is not None:
        blocks.append((start, len(lines), bool(in_fence)))
    return blocks


def _line_span(region: str, at: int, piece: str, first_line: int) -> tuple[str, int, int]:
    """(piece, index of its first line, of its last) for a piece found at offset `at` of `region`, the
    text of lines from `first_line` on joined by newlines."""
    first = first_line + region.count("\n", 0, at)
    return piece, first, first + piece.count("\n")


def _section_chunks(lines: list[str], budget: Budget, overlap: int) -> list[tuple[str, int, int]]:
    """(text, first line index, last line index) of each chunk of a section's body lines."""
    blocks = _blocks(lines)
    if not blocks:
        return []
    costs = {(s, e): budget.cost("\n".join(lines[s:e])) for s, e, _ in blocks}
    out: list[tuple[str, int, int]] = []
    for first, last in pack([(s, e) for s, e, _ in blocks], lambda s, e: costs[(s, e)], budget.tokens):
        s, e, is_fence = blocks[first][0], blocks[last][1], blocks[first][2]
        region = "\n".join(lines[s:e])
        lead = len(region) - len(region.lstrip())
        text = region.strip()
        if first == last and costs[(s, e)] > budget.tokens:
            if is_fence:
                for a, b, t in line_windows(lines[s:e], budget.tok, budget.tokens, overlap):
                    raw = "\n".join(lines[s + a:s + b + 1])
                    out.append(_line_span(raw, len(raw) - len(raw.lstrip("\n")), t, s + a))
            else:
                out.extend(_line_span(region, lead + at, piece, s)
                           for at, piece in windows_at(text, budget.tok, budget.tokens, overlap))
        elif text:
            out.append(_line_span(region, lead, text, s))
    return out


def chunk_markdown(text: str, max_tokens: int = 200, overlap: int = 40, tokenizer: Tokenizer = WORDS) -> list[Chunk]:
    """Chunks of a markdown document, in document order. Empty sections produce no chunk."""
    check_caps(max_tokens, overlap)
    chunks: list[Chunk] = []
    for heading_path, lines, base in _sections(text):
        budget = Budget(tokenizer, max_tokens, heading_path)
        for piece, first, last in _section_chunks(lines, budget, overlap):
            chunk = Chunk(piece, budget.path, len(chunks), (base + first + 1, base + last + 1))
            chunks.extend(enforce(chunk, budget, overlap, len(chunks)))
    return chunks


def enforce(chunk: Chunk, budget: Budget, overlap: int, ordinal: int) -> list[Chunk]:
    """The chunk itself when what is embedded fits the cap (the exact count), else its windows. Sums of
    pieces match the exact count for WordPiece (words never span a line break), so this is a guard."""
    if budget.fits(chunk.text):
        return [Chunk(chunk.text, chunk.heading_path, ordinal, chunk.lines)]
    smaller = max(1, budget.tokens - 8)
    pieces = windows_at(chunk.text, budget.tok, smaller, min(overlap, smaller - 1))
    return [Chunk(p, chunk.heading_path, ordinal + i, _piece_lines(chunk, at, p)) for i, (at, p) in enumerate(pieces)]


def _piece_lines(chunk: Chunk, at: int, piece: str) -> tuple[int, int] | None:
    """The lines of a piece of `chunk` starting at offset `at` of its text."""
    if chunk.lines is None:
        return None
    first = chunk.lines[0] + chunk.text.count("\n", 0, at)
    return first, min(chunk.lines[1], first + piece.count("\n"))
