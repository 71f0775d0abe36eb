"""Markdown chunking: headings open sections, fences hide headings, long sections become windows."""

from __future__ import annotations

import pytest

from shared.index.chunking import TOKEN, Chunk, chunk_markdown, count_tokens, embed_text


def paths(chunks: list[Chunk]) -> list[tuple[str, ...]]:
    return [c.heading_path for c in chunks]


def test_all_six_heading_levels_open_nested_sections():
    text = "\n".join(f"{'#' * level} H{level}\nbody {level}" for level in range(1, 7))
    chunks = chunk_markdown(text)
    assert [c.text for c in chunks] == [f"body {level}" for level in range(1, 7)]
    assert paths(chunks) == [tuple(f"H{i}" for i in range(1, level + 1)) for level in range(1, 7)]
    assert [c.ordinal for c in chunks] == list(range(6))


def test_seven_hashes_is_not_a_heading():
    chunks = chunk_markdown("# Top\n####### not a heading\nmore")
    assert len(chunks) == 1
    assert chunks[0].heading_path == ("Top",)
    assert "####### not a heading" in chunks[0].text


def test_heading_path_pops_back_to_shallower_level():
    text = """# A
a
### A.c
deep
## A.b
mid
#### A.b.x
x
# B
b
## B.a
ba
"""
    chunks = chunk_markdown(text)
    assert [(c.heading_path, c.text) for c in chunks] == [
        (("A",), "a"),
        (("A", "A.c"), "deep"),
        (("A", "A.b"), "mid"),          # the level-3 heading is gone, level 1 stays
        (("A", "A.b", "A.b.x"), "x"),
        (("B",), "b"),                  # a new level-1 heading clears everything
        (("B", "B.a"), "ba"),
    ]


def test_sibling_heading_replaces_previous_one_at_same_level():
    chunks = chunk_markdown("# Top\n## One\n1\n## Two\n2")
    assert paths(chunks) == [("Top", "One"), ("Top", "Two")]


def test_text_before_first_heading_has_empty_path_and_closing_hashes_are_stripped():
    chunks = chunk_markdown("intro line\n## Title ##\nbody\n### C# notes\ncode talk")
    assert [(c.heading_path, c.text) for c in chunks] == [
        ((), "intro line"),
        (("Title",), "body"),
        (("Title", "C# notes"), "code talk"),
    ]


@pytest.mark.parametrize("fence", ["```", "~~~"])
def test_hash_inside_fenced_code_is_not_a_heading(fence):
    text = f"# Real\nbefore\n{fence}python\n# a comment\n## another\n{fence}\n## Sub\nafter"
    chunks = chunk_markdown(text)
    assert paths(chunks) == [("Real",), ("Real", "Sub")]
    assert "# a comment" in chunks[0].text and "## another" in chunks[0].text
    assert chunks[1].text == "after"


def test_other_fence_marker_does_not_close_a_fence():
    # A ~~~ line inside a ``` fence is content; the fence still hides the heading after it.
    text = "# Real\n```\n~~~\n# still code\n```\n# Next\nx"
    chunks = chunk_markdown(text)
    assert paths(chunks) == [("Real",), ("Next",)]
    assert "# still code" in chunks[0].text


@pytest.mark.parametrize("line", ["#hashtag", "##no-space", "#tag and words"])
def test_hash_without_space_is_not_a_heading(line):
    chunks = chunk_markdown(f"# Title\n{line}\nrest")
    assert len(chunks) == 1
    assert chunks[0].heading_path == ("Title",)
    assert line in chunks[0].text


def test_long_section_splits_into_overlapping_windows():
    words = [f"w{i}" for i in range(100)]
    chunks = chunk_markdown("# Long\n" + " ".join(words), max_tokens=30, overlap=10)
    assert len(chunks) > 1
    assert all(c.heading_path == ("Long",) for c in chunks)
    assert all(count_tokens(c.text) <= 30 for c in chunks)
    token_lists = [c.text.split() for c in chunks]
    # Consecutive windows repeat exactly `overlap` tokens of the previous one.
    for prev, cur in zip(token_lists, token_lists[1:], strict=False):
        assert prev[-10:] == cur[:10]
    # Together the windows cover the whole section, in order, starting and ending on its edges.
    assert token_lists[0][0] == "w0" and token_lists[-1][-1] == "w99"
    covered = token_lists[0] + [t for toks in token_lists[1:] for t in toks[10:]]
    assert covered == words
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_windows_keep_original_text_and_count_punctuation_as_tokens():
    text = "alpha, beta. gamma; delta! " * 10  # 8 tokens per repetition
    chunks = chunk_markdown(text, max_tokens=16, overlap=4)
    assert len(chunks) > 1
    for c in chunks:
        assert c.text in text.strip()  # windows are slices of the source, not re-joined tokens
        assert count_tokens(c.text) <= 16
    for prev, cur in zip(chunks, chunks[1:], strict=False):
        assert TOKEN.findall(prev.text)[-4:] == TOKEN.findall(cur.text)[:4]


def test_zero_overlap_windows_do_not_repeat():
    words = [f"t{i}" for i in range(25)]
    chunks = chunk_markdown(" ".join(words), max_tokens=10, overlap=0)
    assert [c.text.split() for c in chunks] == [words[0:10], words[10:20], words[20:25]]


def test_section_at_the_cap_is_one_chunk():
    words = " ".join(f"w{i}" for i in range(20))
    assert [c.text for c in chunk_markdown(words, max_tokens=20, overlap=5)] == [words]


def test_empty_sections_yield_no_chunk():
    chunks = chunk_markdown("# Empty\n\n   \n## Also empty\n## Full\ntext\n# Trailing empty\n\n")
    assert [(c.heading_path, c.text) for c in chunks] == [(("Empty", "Full"), "text")]
    assert chunk_markdown("") == []
    assert chunk_markdown("# only\n## headings\n") == []


def test_embed_text_and_content_hash_include_heading_path():
    a = Chunk("same body", ("A",))
    b = Chunk("same body", ("B",))
    assert embed_text(a) == "A\nsame body"
    assert embed_text(Chunk("no path")) == "no path"
    assert a.content_hash != b.content_hash
    assert a.content_hash == Chunk("same body", ("A",), ordinal=7).content_hash


@pytest.mark.parametrize("max_tokens, overlap", [(0, 0), (-1, 0), (10, 10), (10, 11), (10, -1)])
def test_invalid_arguments_raise(max_tokens, overlap):
    with pytest.raises(ValueError):
        chunk_markdown("# x\ntext", max_tokens=max_tokens, overlap=overlap)
