"""What a file is, from its name: a document type (markdown, code, text) and, for code, its language
(the tree-sitter grammar name, used for chunking and kept in the document's metadata)."""

from __future__ import annotations

from pathlib import PurePosixPath

MARKDOWN, CODE, TEXT = "markdown", "code", "text"

EXTENSIONS: dict[str, tuple[str, str | None]] = {
    ".md": (MARKDOWN, None), ".markdown": (MARKDOWN, None), ".mdx": (MARKDOWN, None),
    ".txt": (TEXT, None), ".rst": (TEXT, None), ".adoc": (TEXT, None),
    ".py": (CODE, "python"), ".pyi": (CODE, "python"),
    ".go": (CODE, "go"),
    ".js": (CODE, "javascript"), ".mjs": (CODE, "javascript"), ".cjs": (CODE, "javascript"),
    ".jsx": (CODE, "javascript"),
    ".ts": (CODE, "typescript"), ".tsx": (CODE, "tsx"),
    ".java": (CODE, "java"), ".kt": (CODE, "kotlin"), ".scala": (CODE, "scala"),
    ".rs": (CODE, "rust"), ".c": (CODE, "c"), ".h": (CODE, "c"),
    ".cc": (CODE, "cpp"), ".cpp": (CODE, "cpp"), ".hpp": (CODE, "cpp"), ".hh": (CODE, "cpp"),
    ".cs": (CODE, "csharp"), ".rb": (CODE, "ruby"), ".php": (CODE, "php"), ".swift": (CODE, "swift"),
    ".lua": (CODE, "lua"), ".sh": (CODE, "bash"), ".bash": (CODE, "bash"), ".sql": (CODE, "sql"),
    ".proto": (CODE, "proto"), ".tf": (CODE, "hcl"),
    ".yaml": (CODE, "yaml"), ".yml": (CODE, "yaml"), ".json": (CODE, "json"), ".toml": (CODE, "toml"),
}
NAMES: dict[str, tuple[str, str | None]] = {
    "Makefile": (CODE, "make"), "Dockerfile": (CODE, "dockerfile"),
}

# What a source takes when its request names no include globs: text and code a repository holds.
DEFAULT_INCLUDE = tuple(sorted(f"*{ext}" for ext in EXTENSIONS)) + tuple(sorted(NAMES))


def classify(path: str) -> tuple[str, str | None]:
    """(type, language or None) of a file, from its name; unknown names are text."""
    name = PurePosixPath(path).name
    if name in NAMES:
        return NAMES[name]
    return EXTENSIONS.get(PurePosixPath(name).suffix.lower(), (TEXT, None))
