"""Answers sized for a reader with a budget (an agent's context window):

- `group_by: "document"`: one result per document; the document's hits among the top candidates whose
  chunks are adjacent or overlapping in it are merged into passages with line ranges, the text two
  consecutive chunks share (SWAPLINE_CHUNK_OVERLAP_TOKENS) kept once;
- `max_tokens`: the answer's texts (hit texts, or passage texts) cut to that many model tokens in all,
  counted with the embedder's tokenizer, the lowest-ranked content dropped or cut first.

Both work on the hits the engine returns, so they cost what the answer holds, not the collection.
"""

from __future__ import annotations

from shared.index.tokens import Tokenizer

GROUP_BY = ("document",)
# The largest `max_tokens` a search may ask for: counting and cutting cost what the answer holds, and
# an answer past this is not sized for anything anymore.
MAX_ANSWER_TOKENS = 100_000
# Candidates fetched to fill k documents: documents with several hits take several candidates. Bounded
# (each candidate is a record read).
CANDIDATES_PER_RESULT = 4
MIN_CANDIDATES = 40
MAX_CANDIDATES = 400
# Passages one document may contribute (its best-scored ones, shown in document order).
PASSAGES_PER_DOCUMENT = 4
# The shared text of two chunks is looked for in this many characters at A's end and B's start, with
# at most OVERLAP_TRIES probe positions: a hostile repetitive text costs a bounded amount.
OVERLAP_WINDOW = 4096
OVERLAP_PROBE = 16
OVERLAP_TRIES = 64


def candidates(k: int) -> int:
    """Hits the engine is asked for to fill `k` documents."""
    return min(MAX_CANDIDATES, max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * k))


def ordinal(hit: dict) -> int | None:
    """The chunk's position in its document (chunk ids are `{doc_id}#{ordinal}`), None when unknown."""
    prefix, chunk_id = hit["doc_id"] + "#", hit.get("chunk_id") or ""
    rest = chunk_id[len(prefix):]
    return int(rest) if chunk_id.startswith(prefix) and rest.isdigit() else None


def _lines(hit: dict) -> tuple[int, int] | None:
    lines = hit.get("lines")
    if isinstance(lines, list | tuple) and len(lines) == 2 and all(isinstance(n, int) for n in lines):
        return lines[0], lines[1]
    return None


def overlap(a: str, b: str, at_word: bool = False) -> int:
    """The length of the longest end of `a` that `b` starts with (0: none found); with `at_word`, only
    an end that starts a word of `a`."""
    tail, head = a[-OVERLAP_WINDOW:], b[:OVERLAP_WINDOW]

    def fits(n: int) -> bool:
        start = len(a) - n
        return not at_word or start == 0 or a[start - 1].isspace()

    if len(head) >= OVERLAP_PROBE:
        probe, start = head[:OVERLAP_PROBE], 0
        for _ in range(OVERLAP_TRIES):  # the first match in the tail is the longest overlap
            i = tail.find(probe, start)
            if i < 0:
                break
            n = len(tail) - i
            if n <= len(head) and head[:n] == tail[i:] and fits(n):
                return n
            start = i + 1
    for n in range(min(OVERLAP_PROBE - 1, len(tail), len(head)), 0, -1):
        if tail[-n:] == head[:n] and fits(n):
            return n
    return 0


def _mergeable(last: dict, hit: dict, code: bool) -> bool:
    """Whether `hit` continues the passage ending with `last`: the next chunk of the document, in the
    same section (or any definition of a code file), or touching its lines."""
    a, b = ordinal(last), ordinal(hit)
    if a is None or b is None or b != a + 1:
        return False
    la, lb = _lines(last), _lines(hit)
    touching = la is not None and lb is not None and lb[0] <= la[1] + 1
    return code or touching or list(last.get("heading_path") or []) == list(hit.get("heading_path") or [])


def _join(passage: dict, hit: dict) -> None:
    """Append `hit`'s text to `passage`, once: what it shares with the passage's end is not repeated,
    and the blank lines between them (known from the lines) are kept."""
    text, end = hit["text"], passage["end_line"]
    lines = _lines(hit)
    if lines is not None and end is not None:
        if lines[0] <= end:  # overlapping lines: the shared text is the passage's end
            shared = overlap(passage["text"], text)
            sep = "" if shared else (" " if lines[0] == end else "\n")
        else:
            shared, sep = 0, "\n" * (lines[0] - end)
        passage["end_line"] = max(end, lines[1])
    else:
        shared = overlap(passage["text"], text, at_word=True)
        sep = "" if shared else "\n\n"
        passage["end_line"] = None
    passage["text"] += sep + text[shared:]
    passage["score"] = max(passage["score"], hit["score"])
    passage["chunk_ids"].append(hit["chunk_id"])


def passages(doc_hits: list[dict]) -> list[dict]:
    """A document's hits merged into passages, in document order: runs of consecutive chunks (see
    `_mergeable`) become one passage spanning their lines."""
    code = (doc_hits[0].get("metadata") or {}).get("type") == "code"
    ordered = sorted(doc_hits, key=lambda h: (ordinal(h) is None, ordinal(h) or 0, (_lines(h) or (0, 0))[0]))
    out: list[dict] = []
    last: dict | None = None
    for hit in ordered:
        if last is not None and _mergeable(last, hit, code):
            _join(out[-1], hit)
        else:
            lines = _lines(hit)
            out.append({"text": hit["text"], "start_line": lines[0] if lines else None,
                        "end_line": lines[1] if lines else None, "score": hit["score"],
                        "heading_path": hit.get("heading_path", []), "chunk_ids": [hit["chunk_id"]]})
        last = hit
    return out


def group_by_document(hits: list[dict], k: int) -> list[dict]:
    """One result per document, best first (by its best hit), at most `k`: the best hit's score,
    ranks, heading path and metadata, and at most PASSAGES_PER_DOCUMENT passages (the best-scored, in
    document order)."""
    by_doc: dict[str, list[dict]] = {}
    for hit in hits:  # best first, so a document's first hit is its best
        by_doc.setdefault(hit["doc_id"], []).append(hit)
    results = []
    for doc_id, doc_hits in list(by_doc.items())[:k]:
        best = doc_hits[0]
        merged = passages(doc_hits)
        kept = sorted(sorted(range(len(merged)), key=lambda i: -merged[i]["score"])[:PASSAGES_PER_DOCUMENT])
        results.append({"doc_id": doc_id, "score": best["score"], "heading_path": best.get("heading_path", []),
                        "metadata": best.get("metadata", {}), "vector_rank": best.get("vector_rank"),
                        "keyword_rank": best.get("keyword_rank"), "passages": [merged[i] for i in kept]})
    return results


def count_tokens(tok: Tokenizer, text: str) -> int:
    """Model tokens of `text`, without the special tokens the model adds around every input."""
    return tok.count(text) - tok.special if text else 0


def cut_to(tok: Tokenizer, text: str, budget: int) -> str:
    """The longest start of `text`, ended between words, of at most `budget` tokens ("" when not even
    its first word fits)."""
    words = tok.words(text)
    used, keep = 0, 0
    for _start, end, n in words:
        if used + n > budget:
            break
        used, keep = used + n, end
    piece = text[:keep].rstrip()
    while piece and count_tokens(tok, piece) > budget:  # a guard: word counts add up for WordPiece
        cut = piece.rfind(" ")
        piece = piece[:max(0, cut)].rstrip()
    return piece


def _with_text(item: dict, text: str, grouped: bool) -> dict:
    """`item` (a hit, or a passage when `grouped`) holding only `text`, the start of its own, with its
    last line moved up to match."""
    out = {**item, "text": text}
    if grouped and item.get("start_line") is not None:
        out["end_line"] = item["start_line"] + text.count("\n")
    lines = None if grouped else _lines(item)
    if lines is not None:
        out["lines"] = [lines[0], lines[0] + text.count("\n")]
    return out


def fit_tokens(hits: list[dict], max_tokens: int, tok: Tokenizer, grouped: bool) -> tuple[list[dict], int, bool]:
    """(hits, tokens their texts hold, whether anything was cut or dropped): texts are taken in rank
    order (results best first; within a grouped result, its passages best-scored first) while they
    fit `max_tokens`; the first that does not is cut between words to what is left, and everything
    ranked below it is dropped."""
    left, truncated, out = max_tokens, False, []
    for hit in hits:
        if truncated:
            break
        units = hit["passages"] if grouped else [hit]
        kept: dict[int, dict] = {}
        for i in sorted(range(len(units)), key=lambda j: -units[j]["score"]):
            text = units[i]["text"]
            n = count_tokens(tok, text)
            if n <= left:
                kept[i], left = units[i], left - n
                continue
            truncated = True
            piece = cut_to(tok, text, left)
            if piece:
                kept[i] = _with_text(units[i], piece, grouped)
                left -= count_tokens(tok, piece)
            break
        if kept:
            out.append({**hit, "passages": [kept[i] for i in sorted(kept)]} if grouped else kept[0])
    return out, max_tokens - left, truncated
