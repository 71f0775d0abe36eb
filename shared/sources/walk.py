"""Walking a source tree: which files belong to it.

A file belongs when it matches the include globs (default: common text and code extensions), matches
no exclude glob, is not ignored by a `.gitignore` on its way from the source folder (matched with
pathspec, the deepest file deciding, as git does), and lies in no skipped folder (`.git/`, the usual
build, cache and vendor folders). Symlinked folders are not followed; a symlinked file counts only
when it resolves inside the source. The walk reads names and `stat` results only: content checks
(binary, not UTF-8, too large) belong to the reconcile, which reads changed files anyway.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from shared.sources.filetypes import DEFAULT_INCLUDE
from shared.sources.paths import file_in_source

SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", ".bzr", "node_modules", "bower_components", "vendor", "third_party",
    "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".idea", ".vscode", ".gradle", ".next", ".terraform", ".cache", "build", "dist", "target", "_output",
    "htmlcov", "coverage", "bazel-bin", "bazel-out", "bazel-testlogs",
})
IGNORE_FILE = ".gitignore"


@dataclass(frozen=True)
class Entry:
    rel: str  # posix path relative to the source folder
    size: int
    mtime_ns: int


@dataclass
class Walk:
    files: dict[str, Entry] = field(default_factory=dict)
    # reason -> files left out that looked like part of the tree (gitignored, symlink_outside, ...)
    skipped: Counter = field(default_factory=Counter)
    skipped_dirs: int = 0


class Rules:
    """The include/exclude globs and the tree's .gitignore files, read once per walk."""

    def __init__(self, folder: Path, include: Iterable[str] = (), exclude: Iterable[str] = ()):
        self.folder = folder
        self.include = pathspec.PathSpec.from_lines("gitignore", list(include) or DEFAULT_INCLUDE)
        self.exclude = pathspec.PathSpec.from_lines("gitignore", list(exclude))
        self._ignore: dict[str, pathspec.GitIgnoreSpec | None] = {}

    def _spec(self, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        if rel_dir not in self._ignore:
            path = self.folder / rel_dir / IGNORE_FILE if rel_dir else self.folder / IGNORE_FILE
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
                self._ignore[rel_dir] = pathspec.GitIgnoreSpec.from_lines(lines)
            except OSError:
                self._ignore[rel_dir] = None
        return self._ignore[rel_dir]

    def gitignored(self, rel: str, is_dir: bool) -> bool:
        """Whether a .gitignore between the source folder and `rel` ignores it (the deepest decides)."""
        parts = rel.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            spec = self._spec("/".join(parts[:depth]))
            if spec is None:
                continue
            tail = "/".join(parts[depth:]) + ("/" if is_dir else "")
            decision = spec.check_file(tail).include
            if decision is not None:
                return decision
        return False

    def dir_reason(self, rel: str) -> str | None:
        name = rel.rsplit("/", 1)[-1]
        if name in SKIP_DIRS:
            return "skipped_dir"
        if self.exclude.match_file(rel + "/"):
            return "excluded"
        if self.gitignored(rel, is_dir=True):
            return "gitignored"
        return None

    def file_reason(self, rel: str) -> str | None:
        if self.exclude.match_file(rel):
            return "excluded"
        if not self.include.match_file(rel):
            return "not_included"
        if self.gitignored(rel, is_dir=False):
            return "gitignored"
        return None

    def ancestors_reason(self, rel: str) -> str | None:
        """Why a folder on the way to `rel` is skipped, if one is."""
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            reason = self.dir_reason("/".join(parts[:depth]))
            if reason:
                return reason
        return None


def _add_file(walk: Walk, rules: Rules, rel: str) -> None:
    reason = rules.file_reason(rel)
    if reason:
        if reason != "not_included":
            walk.skipped[reason] += 1
        return
    path = rules.folder / rel
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            if file_in_source(rules.folder, rel) is None:
                walk.skipped["symlink_outside"] += 1
                return
            info = path.stat()
    except OSError:
        return  # gone meanwhile
    if not stat.S_ISREG(info.st_mode):
        return
    walk.files[rel] = Entry(rel, info.st_size, info.st_mtime_ns)


def _walk_dir(walk: Walk, rules: Rules, start_rel: str) -> None:
    top = rules.folder / start_rel if start_rel else rules.folder
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rel_dir = os.path.relpath(dirpath, rules.folder).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if os.path.islink(os.path.join(dirpath, name)):
                walk.skipped_dirs += 1  # symlinked folders are not followed
            elif rules.dir_reason(rel):
                walk.skipped_dirs += 1
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            _add_file(walk, rules, f"{rel_dir}/{name}" if rel_dir else name)


def walk_tree(rules: Rules, paths: Iterable[str] | None = None) -> Walk:
    """The files of the tree, or only those at or under `paths` (relative; a watcher's changes)."""
    walk = Walk()
    if paths is None:
        _walk_dir(walk, rules, "")
        return walk
    for rel in sorted(set(paths)):
        if rules.ancestors_reason(rel):
            continue
        path = rules.folder / rel
        if path.is_dir() and not path.is_symlink():
            if not rules.dir_reason(rel):
                _walk_dir(walk, rules, rel)
        elif path.exists() or path.is_symlink():
            _add_file(walk, rules, rel)
    return walk


def under(rel: str, scopes: Iterable[str]) -> bool:
    """Whether `rel` is one of `scopes` or lies under one of them."""
    return any(rel == s or rel.startswith(s + "/") for s in scopes)
