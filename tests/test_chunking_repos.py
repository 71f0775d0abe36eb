"""Chunking for repositories: caps counted with MiniLM's own tokenizer (the `tokenizers` library reading
the packaged tokenizer.json; no torch), code fences kept whole, front matter as metadata, code split at
definitions with tree-sitter, line windows where no grammar applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.index.chunking import chunk_markdown, embed_text, split_front_matter
from shared.index.codechunks import chunk_code, parser_for
from shared.index.documents import chunk_document
from shared.index.tokens import minilm_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "webapp" / "devstack" / "sample_corpus" / "keps"
CORPUS = ROOT.parent / "shared" / "corpora" / "kubernetes-enhancements"


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


def test_the_tokenizer_counts_what_the_model_reads(tok):
    assert tok.max_tokens == 256
    assert tok.count("") == 2  # [CLS] [SEP]
    assert tok.count("kubernetes") == 2 + 4  # ku ##ber ##net ##es
    words = tok.words("kubernetes rocks")
    assert [(s, e, n) for s, e, n in words] == [(0, 10, 4), (11, 16, 1)]


def test_no_sample_chunk_exceeds_the_cap_once_the_heading_path_is_added(tok):
    files = sorted(SAMPLE.rglob("README.md"))
    assert len(files) >= 40
    total = over_cap = 0
    for path in files:
        for chunk in chunk_document(path.read_text(), {}, tok, 200, 40)[0]:
            total += 1
            over_cap += tok.count(embed_text(chunk)) > 200
    assert total > 5000 and over_cap == 0


def test_code_fences_stay_whole_where_they_fit(tok):
    fence = "```yaml\napiVersion: v1\nkind: Pod\n\nmetadata:\n  name: x\n```"
    text = "# Example\n" + "intro words " * 60 + "\n\n" + fence + "\n\nafter the fence\n"
    chunks = chunk_markdown(text, 80, 10, tok)
    holding = [c for c in chunks if "apiVersion" in c.text]
    assert len(holding) == 1 and fence in holding[0].text
    assert all(tok.count(embed_text(c)) <= 80 for c in chunks)


def test_a_fence_longer_than_the_cap_is_cut_at_line_ends(tok):
    body = "\n".join(f"line_{i} = compute({i})" for i in range(200))
    chunks = chunk_markdown(f"# Big\n```python\n{body}\n```\n", 60, 8, tok)
    assert len(chunks) > 3 and all(tok.count(embed_text(c)) <= 60 for c in chunks)
    for chunk in chunks[1:-1]:
        assert all(line.startswith("line_") for line in chunk.text.splitlines())


def test_front_matter_is_metadata_not_text(tok):
    text = "---\ntitle: Swap\nstatus: implemented\n---\n# Swap\nNodes may use swap memory.\n"
    chunks, extra = chunk_document(text, {"type": "markdown"}, tok, 200, 40)
    assert extra == {"front_matter": {"title": "Swap", "status": "implemented"}}
    assert [c.text for c in chunks] == ["Nodes may use swap memory."]
    assert split_front_matter("---\n- a list\n---\nbody") == (None, "---\n- a list\n---\nbody")
    assert split_front_matter("no front matter") == (None, "no front matter")


def test_heading_paths_longer_than_half_the_cap_are_shortened(tok):
    titles = "\n".join(f"{'#' * (i + 1)} {'very long title words ' * 10}{i}" for i in range(6))
    chunks = chunk_markdown(titles + "\nthe body text\n", 60, 10, tok)
    assert chunks and all(tok.count(embed_text(c)) <= 60 for c in chunks)
    assert chunks[0].text == "the body text"


PYTHON = '''import os


def alpha(x):
    """First."""
    return x + 1


class Store:
    """Keeps things."""

    def put(self, key, value):
        self.data[key] = value

    def get(self, key):
        return self.data[key]
''' + "".join(f"\n    def method_{i}(self):\n        return {i} * self.scale + os.getpid()\n" for i in range(40))


def test_python_splits_at_definitions_with_symbol_paths(tok):
    assert parser_for("python") is not None
    chunks = chunk_code(PYTHON, "python", 120, 20, tok)
    assert all(tok.count(embed_text(c)) <= 120 for c in chunks)
    assert chunks[0].heading_path == ("alpha",) and "def alpha" in chunks[0].text and chunks[0].lines[0] == 1
    store = [c for c in chunks if c.heading_path[:1] == ("Store",)]
    assert len(store) > 2  # too big for one chunk: opened at its methods
    assert "class Store" in store[0].text and "def put" in store[0].text
    assert store[0].heading_path == ("Store", "put, get, method_0, ...")
    assert all(c.lines[0] <= c.lines[1] for c in chunks)
    for i in range(40):  # no method is cut: its def and its body are in one chunk
        assert any(f"def method_{i}(" in c.text and f"return {i} *" in c.text for c in chunks), i


@pytest.mark.parametrize(("language", "source", "names"), [
    ("go", "package x\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n\ntype Pair struct{ A, B int }\n", ["Add, Pair"]),
    ("javascript", "function hello() { return 1 }\nclass Box { open() { return 2 } }\n", ["hello, Box"]),
    ("rust", "fn main() {}\nstruct S;\nimpl S { fn f(&self) {} }\n", ["main, S, S"]),
])
def test_other_languages_name_their_definitions(tok, language, source, names):
    chunks = chunk_code(source, language, 200, 20, tok)
    assert [c.heading_path[-1] for c in chunks] == names


def test_languages_without_a_grammar_get_line_windows(tok):
    text = "\n".join(f"setting_{i} := value {i}" for i in range(300))
    chunks = chunk_code(text, "no-such-language", 50, 10, tok)
    assert len(chunks) > 5 and all(tok.count(embed_text(c)) <= 50 for c in chunks)
    assert chunks[0].lines[0] == 1 and chunks[-1].lines[1] == 300
    assert chunks[1].lines[0] <= chunks[0].lines[1]  # windows overlap by a few lines


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not here")
def test_kep_yaml_files_chunk_by_top_level_keys(tok):
    path = next(CORPUS.joinpath("keps").rglob("kep.yaml"))
    chunks = chunk_code(path.read_text(), "yaml", 200, 40, tok)
    assert chunks and chunks[0].heading_path[0].startswith("title")
    assert all(tok.count(embed_text(c)) <= 200 for c in chunks)
