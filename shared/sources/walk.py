"""Walking a source tree: which files belong to it.

A file belongs when it matches the include globs (default: common text and code extensions), matches
no exclude glob, is not ignored by a `.gitignore` on its way from the source folder (matched with
pathspec, the deepest file deciding, as git does), and lies in no skipped folder (`.git/`, the usual
build, cache and vendor folders). When the source folder lies inside a git work tree (a `.git` at or
above it, within the source root), the .gitignore files from the work tree's top down to the folder
count too, below those inside it, as they do for git: a reconcile that asks git and one that walks
agree on what belongs. Symlinked folders are not followed; a symlinked file counts only when it
resolves inside the source; a path named by git or a watcher whose parent is a symlink or not a folder
is not part of the tree. The walk reads names and `stat` results only: content checks
(binary, not UTF-8, too large) belong to the reconcile, which reads changed files anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from shared.sources.files import read_in_source
from shared.sources.filetypes import DEFAULT_INCLUDE
from shared.sources.paths import IGNORE_FILE, file_in_source, rel_parts

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", ".bzr", "node_modules", "bower_components", "vendor", "third_party",
    "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".idea", ".vscode", ".gradle", ".next", ".terraform", ".cache", "build", "dist", "target", "_output",
    "htmlcov", "coverage", "bazel-bin", "bazel-out", "bazel-testlogs",
})
# Raise when the walk's rules change in a way the fingerprint of a source's rules cannot see (it hashes
# DEFAULT_INCLUDE and SKIP_DIRS itself): a git source whose recorded fingerprint differs walks once.
RULES_VERSION = 1
DEFAULT_MAX_IGNORE_BYTES = 1024 * 1024
# pathspec matches with backtracking regexes: k wildcards cost up to n^k steps on a path of n characters
# (10 took 34.7 s on one path). Bounded here, the worst measured match is milliseconds.
MAX_PATTERN_CHARS = 256
MAX_WILDCARDS = 3  # `*` and `**` in one pattern (a `**` segment counts once)
MAX_SEGMENT_WILDCARDS = 2  # `*` in one path segment of a pattern
# Patterns one .gitignore may hold (comments and blank lines aside); every path is checked against each,
# so 40,000 bounded patterns cost 12 ms per file (measured): the rest of a longer file is skipped, counted.
MAX_IGNORE_PATTERNS = 1000


def pattern_problem(pattern: str) -> str | None:
    """Why a gitignore-style pattern is refused (too long, too many wildcards), or None."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"a pattern is at most {MAX_PATTERN_CHARS} characters"
    total = 0
    for segment in pattern.split("/"):
        count = 1 if segment == "**" else segment.count("*")
        if count > MAX_SEGMENT_WILDCARDS:
            return f"at most {MAX_SEGMENT_WILDCARDS} '*' in one path segment of a pattern"
        total += count
    if total > MAX_WILDCARDS:
        return f"at most {MAX_WILDCARDS} wildcards ('*' or '**') in a pattern"
    return None


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
    links: set[str] = field(default_factory=set)  # files taken through a symlink (their target may move)


class Rules:
    """The include/exclude globs and the tree's .gitignore files, read once per walk."""

    def __init__(self, folder: Path, include: Iterable[str] = (), exclude: Iterable[str] = (),
                 max_ignore_bytes: int = DEFAULT_MAX_IGNORE_BYTES, top: Path | None = None):
        """`top`: the git work tree's top when `folder` lies inside one (its .gitignore files from there
        down to the folder count too); `max_ignore_bytes`: a .gitignore's size cap (the document cap)."""
        self.folder = folder
        self.max_ignore_bytes = max_ignore_bytes
        self._patterns = (sorted(include), sorted(exclude))
        # Refused at source creation (shared.sources.submit); dropped here too for sources stored before.
        self.include = pathspec.PathSpec.from_lines(
            "gitignore", [p for p in include if not pattern_problem(p)] or DEFAULT_INCLUDE)
        self.exclude = pathspec.PathSpec.from_lines("gitignore", [p for p in exclude if not pattern_problem(p)])
        self._ignore: dict[str, pathspec.GitIgnoreSpec | None] = {}
        self.refused: Counter = Counter()  # .gitignore files and lines left out, by reason
        # The .gitignore files above the folder, up to the work tree's top: (the folder's path from the
        # one holding it, its spec), deepest first; and a digest of their text for the fingerprint.
        self._above: list[tuple[str, pathspec.GitIgnoreSpec]] = []
        self._above_digest = hashlib.sha256()
        self.above_ignored = False  # a .gitignore above ignores the folder itself (or a folder on the way)
        if top is not None and top != folder and top in folder.parents:
            self._read_above(top, folder.relative_to(top).parts)

    def _read_above(self, top: Path, parts: tuple[str, ...]) -> None:
        for depth in range(len(parts)):
            rel_dir = "/".join(parts[:depth])
            rel = f"{rel_dir}/{IGNORE_FILE}" if rel_dir else IGNORE_FILE
            spec, data = self._read_ignore(top, rel)
            self._above_digest.update(f"{rel}\0{len(data)}\0".encode() + data)
            if spec is None:
                continue
            self._above.insert(0, ("/".join(parts[depth:]), spec))
            # git lists nothing below an ignored folder: the folders on the way, the source's included
            if any(spec.check_file("/".join(parts[depth:end]) + "/").include for end in range(depth + 1,
                                                                                           len(parts) + 1)):
                self.above_ignored = True

    def fingerprint(self) -> str:
        """A digest of everything that decides what belongs besides the tree's own .gitignore files
        and names: include and exclude globs, the size cap, the built-in defaults (DEFAULT_INCLUDE,
        SKIP_DIRS, RULES_VERSION) and the .gitignore files above the folder. A git source recorded
        with another one walks the tree, since git names only what changed."""
        h = hashlib.sha256(json.dumps([RULES_VERSION, *self._patterns, self.max_ignore_bytes, sorted(DEFAULT_INCLUDE),
                                       sorted(SKIP_DIRS)]).encode())
        h.update(self._above_digest.digest())
        return h.hexdigest()[:32]

    def _spec(self, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        if rel_dir not in self._ignore:
            self._ignore[rel_dir] = self._read_ignore(
                self.folder, f"{rel_dir}/{IGNORE_FILE}" if rel_dir else IGNORE_FILE)[0]
        return self._ignore[rel_dir]

    def _read_ignore(self, base: Path, rel: str) -> tuple[pathspec.GitIgnoreSpec | None, bytes]:
        """(spec, text) of a .gitignore read like any tree file (from `base`, no symlink, regular file
        only, under the size cap); a refused file or line is counted and logged, never fatal."""
        try:
            _, data, problem = read_in_source(base, rel, self.max_ignore_bytes, follow=False)
        except OSError:
            return None, b""  # none there (or gone)
        if problem or data is None:
            self.refused["gitignore_refused"] += 1
            log.warning("event=walk.gitignore_refused folder=%s file=%s reason=%s", base, rel, problem)
            return None, b""
        lines: list[str] = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            if len(lines) == MAX_IGNORE_PATTERNS:
                self.refused["gitignore_pattern_refused"] += 1
                log.warning("event=walk.gitignore_patterns_capped folder=%s file=%s kept=%s", self.folder, rel,
                            MAX_IGNORE_PATTERNS)
                break
            problem = pattern_problem(line.strip())
            if problem:
                self.refused["gitignore_pattern_refused"] += 1
                log.warning("event=walk.gitignore_pattern_refused folder=%s file=%s reason=%r", base, rel,
                            problem)
            else:
                lines.append(line)
        return pathspec.GitIgnoreSpec.from_lines(lines), data

    def gitignored(self, rel: str, is_dir: bool) -> bool:
        """Whether a .gitignore between the work tree's top (or the source folder) and `rel` ignores it
        (the deepest decides)."""
        if self.above_ignored:
            return True
        parts = rel.split("/")
        suffix = "/" if is_dir else ""
        for depth in range(len(parts) - 1, -1, -1):
            spec = self._spec("/".join(parts[:depth]))
            if spec is None:
                continue
            decision = spec.check_file("/".join(parts[depth:]) + suffix).include
            if decision is not None:
                return decision
        for folder_from_there, spec in self._above:
            decision = spec.check_file(f"{folder_from_there}/{rel}{suffix}").include
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
            walk.links.add(rel)
    except OSError:
        return  # gone meanwhile
    if not stat.S_ISREG(info.st_mode):
        walk.skipped["not_regular"] += 1  # a FIFO, socket or device is never opened
        return
    walk.files[rel] = Entry(rel, info.st_size, info.st_mtime_ns)


def _walk_dir(walk: Walk, rules: Rules, start_rel: str, check: Callable[[], None] | None = None) -> None:
    top = rules.folder / start_rel if start_rel else rules.folder
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        if check is not None:
            check()
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


def _parents_are_folders(folder: Path, parts: list[str], seen: dict[str, bool]) -> bool:
    """Whether every folder on the way to a path is a real folder (lstat: a symlink is never followed),
    so a named path cannot lead the walk out through a folder swapped for a link."""
    for depth in range(1, len(parts)):
        rel_dir = "/".join(parts[:depth])
        if rel_dir not in seen:
            try:
                seen[rel_dir] = stat.S_ISDIR(os.lstat(folder / rel_dir).st_mode)
            except OSError:
                seen[rel_dir] = False
        if not seen[rel_dir]:
            return False
    return True


def walk_tree(rules: Rules, paths: Iterable[str] | None = None, check: Callable[[], None] | None = None) -> Walk:
    """The files of the tree, or only those at or under `paths` (relative; a watcher's changes, or
    what git names). `check` is called once per folder walked and once per named path (a dry run's
    budget and a job's cancel raise from it). A named path below a symlink or a non-folder is not in
    the tree (a held file there is then gone)."""
    walk = Walk()
    if paths is None:
        _walk_dir(walk, rules, "", check)
        walk.skipped.update(rules.refused)
        return walk
    seen: dict[str, bool] = {}
    for rel in sorted(set(paths)):
        if check is not None:
            check()
        parts = rel_parts(rel)
        if parts is None or not _parents_are_folders(rules.folder, parts, seen) or rules.ancestors_reason(rel):
            continue
        try:
            mode = os.lstat(rules.folder / rel).st_mode
        except OSError:
            continue  # gone
        if stat.S_ISDIR(mode):
            if not rules.dir_reason(rel):
                _walk_dir(walk, rules, rel, check)
        else:
            _add_file(walk, rules, rel)
    walk.skipped.update(rules.refused)
    return walk


def under(rel: str, scopes: Iterable[str]) -> bool:
    """Whether `rel` is one of `scopes` or lies under one of them."""
    return any(rel == s or rel.startswith(s + "/") for s in scopes)
