"""Chunking source code: split at top-level definitions with tree-sitter (grammars from
tree-sitter-language-pack), keep the symbol path like a heading path, fall back to line windows.

Top-level nodes are packed in order into chunks up to the cap (comments travel with the definition
after them), so small definitions share a chunk and a definition that fits is never cut. A node over
the cap is opened: its body's members become the units, under the node's name (`Store > put`); a node
with no members to open is cut into windows of whole lines. Languages without a grammar get line
windows only. Caps are counted like markdown chunks (`shared.index.chunking.Budget`).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, cast

from shared.index.chunking import Budget, Chunk, check_caps, enforce, line_windows, pack
from shared.index.tokens import WORDS, Tokenizer

if TYPE_CHECKING:
    from tree_sitter_language_pack import SupportedLanguage

NAME_FIELDS = ("name", "key", "declarator", "type")
WRAPPER_FIELDS = ("definition", "declaration")
# Statements that name other modules rather than define something here.
NOT_DEFINITIONS = ("import", "include", "package", "use_declaration", "require")
MAX_NAMES = 3
# Tokens kept free when packing a group, for the names it will carry in its symbol path.
LABEL_RESERVE = 24


@cache
def parser_for(language: str | None):
    """A tree-sitter parser for `language`, once per process; None when the pack has no grammar."""
    if not language:
        return None
    try:
        from tree_sitter_language_pack import get_parser

        # Any name may come in; one the pack does not know raises LookupError, caught below.
        return get_parser(cast("SupportedLanguage", language))
    except (LookupError, ValueError, ImportError):
        return None


def _text(src: bytes, start: int, end: int) -> str:
    return src[start:end].decode("utf-8", errors="replace")


def node_name(node, src: bytes, depth: int = 0) -> str | None:
    """The name a definition is known by (function, class, method, type, key), if it has one."""
    if any(word in node.type for word in NOT_DEFINITIONS):
        return None
    for name in NAME_FIELDS:
        child = node.child_by_field_name(name)
        while child is not None and name == "declarator" and child.child_by_field_name("declarator") is not None:
            child = child.child_by_field_name("declarator")
        if child is not None:
            text = _text(src, child.start_byte, child.end_byte).strip().splitlines()
            return text[0][:80] if text else None
    for name in WRAPPER_FIELDS:
        child = node.child_by_field_name(name)
        if child is not None:
            return node_name(child, src, depth + 1)
    if depth == 0:  # e.g. Go's type_declaration holds a type_spec with the name
        for child in node.named_children[:2]:
            found = node_name(child, src, 1)
            if found:
                return found
    return None


def _members(node):
    """The nodes inside `node` worth chunking on their own: the children of its body (a class's
    methods) or of its value (a YAML or JSON key's mapping), found through single-child wrappers. A
    node with neither (a long string, an expression) has none: it is cut into line windows."""
    body = node.child_by_field_name("body") or node.child_by_field_name("value")
    if body is None:
        if node.named_child_count != 1:
            return None, []
        body = node
    for _ in range(8):
        named = [c for c in body.named_children]
        if len(named) >= 2:
            return body, named
        if len(named) != 1:
            return None, []
        body = named[0]
    return None, []


def _units(nodes) -> list[list]:
    """Group nodes so that comments go with the node after them."""
    units: list[list] = []
    waiting: list = []
    for node in nodes:
        if "comment" in node.type:
            waiting.append(node)
            continue
        units.append(waiting + [node])
        waiting = []
    if waiting:
        if units:
            units[-1].extend(waiting)
        else:
            units.append(waiting)
    return units


class _CodeChunker:
    def __init__(self, src: bytes, tok: Tokenizer, cap: int, overlap: int):
        self.src, self.tok, self.cap, self.overlap = src, tok, cap, overlap
        self.chunks: list[Chunk] = []

    def add(self, text: str, path: tuple[str, ...], first_line: int, last_line: int, budget: Budget) -> None:
        if text.strip():
            chunk = Chunk(text, budget.path, len(self.chunks), (first_line, last_line))
            self.chunks.extend(enforce(chunk, budget, self.overlap, len(self.chunks)))

    def lines(self, start: int, end: int, first_line: int, path: tuple[str, ...]) -> None:
        budget = Budget(self.tok, self.cap, path)
        lines = _text(self.src, start, end).split("\n")
        for a, b, text in line_windows(lines, self.tok, budget.tokens, self.overlap):
            self.add(text, path, first_line + a, first_line + b, budget)

    def nodes(self, nodes, path: tuple[str, ...], header: tuple[int, int, int] | None = None) -> None:
        """Chunk a run of sibling nodes under `path`; `header` (start, end, first line) is the text of
        the enclosing definition before its members (a class line, a docstring), kept with the first."""
        units = _units(nodes)
        if not units:
            return
        budget = Budget(self.tok, self.cap, path)
        spans = [(u[0].start_byte, u[-1].end_byte) for u in units]
        if header is not None:
            spans[0] = (header[0], spans[0][1])
        cost = {span: budget.cost(_text(self.src, *span)) for span in spans}
        # Packed with room left for the names the group's symbol path will carry.
        room = max(1, budget.tokens - LABEL_RESERVE)
        groups = pack(spans, lambda s, e: cost[(s, e)], room)
        for a, b in groups:
            start, end = spans[a][0], spans[b][1]
            first_line = (header[2] if header is not None and a == 0 else units[a][0].start_point[0] + 1)
            if a == b and cost[spans[a]] > budget.tokens:
                self.big(units[a], path, start, first_line)
                continue
            names = [n for u in units[a:b + 1] for n in [node_name(u[-1], self.src)] if n]
            label = ", ".join(names[:MAX_NAMES]) + (", ..." if len(names) > MAX_NAMES else "")
            sub = path + (label,) if label else path
            self.add(_text(self.src, start, end), sub, first_line, units[b][-1].end_point[0] + 1,
                     Budget(self.tok, self.cap, sub))

    def big(self, unit: list, path: tuple[str, ...], start: int, first_line: int) -> None:
        """One unit over the cap: open its members, or cut it into line windows."""
        node = unit[-1]
        name = node_name(node, self.src)
        sub = path + (name,) if name else path
        body, members = _members(node)
        if members:
            self.nodes(members, sub, header=(start, members[0].start_byte, first_line))
            return
        self.lines(start, node.end_byte, first_line, sub)


def chunk_code(text: str, language: str | None, max_tokens: int = 200, overlap: int = 40,
               tokenizer: Tokenizer = WORDS) -> list[Chunk]:
    """Chunks of a source file in order, each with its symbol path as heading path and its lines."""
    check_caps(max_tokens, overlap)
    src = text.encode("utf-8")
    chunker = _CodeChunker(src, tokenizer, max_tokens, overlap)
    parser = parser_for(language)
    if parser is None:
        chunker.lines(0, len(src), 1, ())
        return chunker.chunks
    root = parser.parse(src).root_node
    top = root.children if len(root.children) != 1 else _members(root)[1] or root.children
    chunker.nodes([n for n in top if n.end_byte > n.start_byte], ())
    return chunker.chunks
