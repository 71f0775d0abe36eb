"""A small repository-like fixture tree for source tests, made on disk by the test."""

from __future__ import annotations

from pathlib import Path

FILES = {
    "README.md": "# Orchard\nOrchard schedules fruit picking crews across hillside terraces.\n",
    "docs/guide.md": "---\ntitle: Picking guide\nowner: crews\n---\n# Guide\n## Ladders\n"
                     "Ladders are inspected every morning before the apricot harvest.\n",
    "docs/irrigation.md": "# Irrigation\nDrip lines water the pear rows at dawn.\n",
    "src/planner.py": "import math\n\n\ndef crew_size(trees):\n    \"\"\"Pickers needed for a terrace.\"\"\"\n"
                      "    return math.ceil(trees / 40)\n\n\nclass Route:\n    def next_terrace(self, current):\n"
                      "        return current + 1\n",
    "notes.txt": "Remember the cherry tarps before the hail season.\n",
    "secret.md": "# Secret\nThe gitignored plum recipe.\n",
    "build/output.md": "# Built\ngenerated file that the build folder rule skips\n",
    ".gitignore": "secret.md\n*.log\n",
    "debug.log": "ignored log\n",
}
BINARY = {"data/blob.txt": b"\x00\x01binary\x00payload"}


def make_tree(root: Path) -> Path:
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel, data in BINARY.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# README.md, docs/guide.md, docs/irrigation.md, src/planner.py, notes.txt (build/ is skipped, .gitignore
# and debug.log are not included or ignored, secret.md is gitignored, data/blob.txt is binary).
INDEXED = {"README.md", "docs/guide.md", "docs/irrigation.md", "src/planner.py", "notes.txt"}
