"""`python -m tests.bench.chunks`: chunk lengths as MiniLM sees them, before and after exact caps.

"Before" is the chunker of commit ef7a2cd (words counted by a regex, heading path not counted), loaded
from git; "after" is today's. Lengths are counted with the model's own tokenizer on what is embedded
(heading path + text, with [CLS] and [SEP]). Prints, for the first 40 sample KEPs, all 295 sample KEPs
and every markdown file of ../shared/corpora/kubernetes-enhancements: chunks, how many exceed the cap
(200) and the model's limit (256), and the longest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

from shared.index.chunking import embed_text
from shared.index.documents import chunk_document
from shared.index.tokens import minilm_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "webapp" / "devstack" / "sample_corpus"
CORPUS = ROOT.parent / "shared" / "corpora" / "kubernetes-enhancements"
BEFORE = "ef7a2cd"


def old_chunker() -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{BEFORE}:shared/index/chunking.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("chunking_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "chunking_before.py", "exec"), module.__dict__)  # noqa: S102 (our own file, from git)
    return module


def measure(name: str, files: list[Path]) -> None:
    tok = minilm_tokenizer()
    old = old_chunker()
    rows = []
    for label, chunks_of in (
            ("before", lambda text: [tok.count(old.embed_text(c)) for c in old.chunk_markdown(text, 200, 40)]),
            ("after", lambda text: [tok.count(embed_text(c)) for c in chunk_document(text, {}, tok, 200, 40)[0]])):
        lengths = [n for path in files for n in chunks_of(path.read_text(errors="replace"))]
        rows.append(f"{label}: {len(lengths)} chunks, {sum(n > 200 for n in lengths)} over 200, "
                    f"{sum(n > 256 for n in lengths)} over 256, longest {max(lengths)}")
    print(f"{name} ({len(files)} files): " + "; ".join(rows))


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help only
    manifest = json.loads((SAMPLE / "manifest.json").read_text())["files"]
    measure("first 40 sample KEPs", [SAMPLE / e["path"] for e in manifest[:40]])
    measure("all sample KEPs", [SAMPLE / e["path"] for e in manifest])
    if CORPUS.is_dir():
        measure("kubernetes-enhancements markdown", sorted(CORPUS.rglob("*.md")))


if __name__ == "__main__":
    main()
