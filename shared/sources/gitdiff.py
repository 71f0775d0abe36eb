"""Asking git what changed in a source folder, so a reconcile need not walk and stat every file.

Git runs as a read-only oracle over a folder whose content is hostile:
- no hook is ever run (only rev-parse, cat-file, diff, ls-files and config), no pager, no optional
  locks (`GIT_OPTIONAL_LOCKS=0`), `core.fsmonitor` forced off on the command line (it names a command),
  external diff and textconv drivers off; a repository whose own config (local scope, includes too)
  declares a filter driver is not asked at all (`git diff HEAD` may run a clean filter on a file whose
  stat moved), and git's own ownership check (safe.directory) is left to refuse foreign repositories;
- repository discovery stops at the parent of the source root (`GIT_CEILING_DIRECTORIES`), and the
  work tree git reports must be the source folder or hold it, inside that root;
- every call has a timeout and a cap on its output; git's environment is the process's minus every
  `GIT_*` variable;
- every path git prints is checked like a walked one (relative, no `.` or `..` segment, no empty
  segment, valid UTF-8, under the source's prefix in the repository) and counted when refused; a
  folder git prints as such (`nested/`: an untracked repository inside the work tree) is kept as a
  folder, which the reconcile walks with the walk's rules.

Anything unexpected raises `GitUnavailable`; the reconcile then walks the tree, as for any folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import selectors
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared.sources.paths import IGNORE_FILE, is_ignore_file, rel_parts

log = logging.getLogger(__name__)

GIT_TIMEOUT_SECONDS = 30.0  # one git call; an 80k-file `git diff HEAD` takes ~0.1 s here
MAX_OUTPUT_BYTES = 64 * 1024 * 1024  # one call's stdout; past it the call is killed and the tree walked
MAX_PATH_BYTES = 4096
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha-1 or sha-256 object names
# Config keys of the repository itself that make a read-only command run a program: a filter driver
# runs on `git diff HEAD` / `git status` when a file's stat moved. fsmonitor is overridden instead.
RUNS_COMMANDS = re.compile(r"filter\..*\.(clean|smudge|process)")
_BASE = ("git", "--no-pager", "--no-optional-locks", "-c", "core.quotepath=off", "-c", "core.fsmonitor=false",
         "-c", "core.hooksPath=/dev/null", "-c", "diff.external=")


class GitUnavailable(Exception):
    """Git cannot (or must not) say what changed; `reason` is short and goes into the plan."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Changes:
    """What git says about the source folder, paths relative to it."""

    head: str
    committed: set[str] = field(default_factory=set)  # differ between the last indexed commit and HEAD
    dirty: set[str] = field(default_factory=set)  # uncommitted edits (staged or not) against HEAD
    untracked: set[str] = field(default_factory=set)  # untracked, not ignored by a .gitignore
    refused: Counter = field(default_factory=Counter)  # paths git printed that were not taken, by reason

    @property
    def paths(self) -> set[str]:
        return self.committed | self.dirty | self.untracked


def _env(ceiling: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", GIT_CEILING_DIRECTORIES=str(ceiling),
               GIT_NO_LAZY_FETCH="1", LC_ALL="C")
    return env


def run_git(folder: Path, ceiling: Path, args: list[str], timeout: float = GIT_TIMEOUT_SECONDS,
            max_bytes: int = MAX_OUTPUT_BYTES, check: bool = True) -> tuple[int, bytes]:
    """(exit status, stdout) of one git command in `folder`; GitUnavailable when git is missing, runs
    past `timeout`, prints more than `max_bytes`, or (with `check`) fails."""
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([*_BASE, *args], cwd=folder, env=_env(ceiling), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err)
        except OSError as exc:
            raise GitUnavailable(f"git_missing: {exc.strerror}") from None
        assert proc.stdout is not None  # asked for a pipe
        out, size = [], 0
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise GitUnavailable(f"git_timeout: {args[0]} ran past {timeout:g} s")
                    if not sel.select(left):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 1 << 20)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise GitUnavailable(f"git_output_too_large: {args[0]} printed over {max_bytes} bytes")
                    out.append(chunk)
            status = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise GitUnavailable(f"git_timeout: {args[0]} ran past {timeout:g} s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if check and status != 0:
            err.seek(0)
            message = err.read(300).decode("utf-8", "replace").strip().splitlines()
            raise GitUnavailable(f"git_failed: {args[0]} exited {status}: {message[0] if message else ''}")
        return status, b"".join(out)


def split_paths(out: bytes, prefix: str, refused: Counter) -> set[str]:
    """The NUL-separated paths of git's output, relative to the source folder (`prefix`: the folder
    relative to the repository's top, "" or ending in "/"; git must print paths from the top, as
    `diff` does and `ls-files --full-name`). Paths outside the prefix are dropped silently (a pathspec
    already limits them); malformed ones are counted in `refused`. A folder (`nested/`, printed for an
    untracked repository inside the work tree) is kept without its trailing slash."""
    paths = set()
    for raw in out.split(b"\0"):
        if not raw:
            continue
        if len(raw) > MAX_PATH_BYTES:
            refused["git_path_refused"] += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            refused["git_path_refused"] += 1
            continue
        if not text.startswith(prefix):
            continue
        rel = text[len(prefix):]
        if rel.endswith("/"):
            rel = rel[:-1]
        if rel_parts(rel) is None or "\\" in rel or any(ord(c) < 32 for c in rel):
            refused["git_path_refused"] += 1
            continue
        paths.add(rel)
    return paths


@dataclass(frozen=True)
class Repo:
    """A source folder inside a git work tree."""

    folder: Path
    ceiling: Path
    prefix: str  # the folder relative to the work tree's top: "" or "sub/dir/"
    deadline: float | None = None  # time.monotonic() past which no git call may run (a dry run's budget)
    max_bytes: int = MAX_OUTPUT_BYTES  # one call's output

    def git(self, args: list[str], **kw) -> tuple[int, bytes]:
        timeout = GIT_TIMEOUT_SECONDS
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise GitUnavailable(f"git_timeout: no time left for {args[0]}")
        return run_git(self.folder, self.ceiling, args, timeout=timeout, max_bytes=self.max_bytes, **kw)

    def head(self) -> str | None:
        """HEAD's commit, or None on a branch with no commit yet."""
        status, out = self.git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], check=False)
        head = out.decode("ascii", "replace").strip()
        if status != 0:
            return None
        if not COMMIT.fullmatch(head):
            raise GitUnavailable("git_failed: HEAD is not a commit name")
        return head

    def knows(self, commit: str) -> bool:
        if not COMMIT.fullmatch(commit):
            return False
        status, _ = self.git(["cat-file", "-e", f"{commit}^{{commit}}"], check=False)
        return status == 0

    def changes(self, since: str | None, head: str) -> Changes:
        """Paths that differ between `since` and HEAD (none when `since` is None), plus uncommitted
        edits and untracked files (.gitignore files alone decide what is ignored, as in the walk)."""
        found = Changes(head)
        scope = ["--", "."]
        if since and since != head:
            _, out = self.git(["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
                               since, head, *scope])
            found.committed = split_paths(out, self.prefix, found.refused)
        _, out = self.git(["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
                           "HEAD", *scope])
        found.dirty = split_paths(out, self.prefix, found.refused)
        # --full-name: paths from the top like diff's (by default ls-files prints them from the folder).
        _, out = self.git(["ls-files", "-z", "--others", "--full-name", f"--exclude-per-directory={IGNORE_FILE}",
                           *scope])
        found.untracked = split_paths(out, self.prefix, found.refused)
        return found


def worktree_top(folder: Path, root: Path) -> Path | None:
    """The nearest of `folder` and the folders above it, up to `root`, that holds a `.git`: the top of
    the work tree the folder lies in, found without running git (the walk reads the .gitignore files
    from there down, as git does). None for a plain folder; costs a few stats."""
    for candidate in (folder, *folder.parents):
        if not (candidate == root or root in candidate.parents):
            return None
        if os.path.lexists(candidate / ".git"):
            return candidate
    return None


def open_repo(folder: Path, root: Path, deadline: float | None = None,
              max_bytes: int = MAX_OUTPUT_BYTES) -> Repo | None:
    """The git work tree holding the source `folder` (within `root`, one of the source roots), or None
    when there is none. GitUnavailable when there is one git must not be asked about. Each git call
    ends by `deadline` (time.monotonic()) and prints at most `max_bytes`."""
    if worktree_top(folder, root) is None:
        return None  # the common case of a plain folder costs a few stats, no process
    repo = Repo(folder, root.parent, "", deadline, max_bytes)
    status, out = repo.git(["rev-parse", "--is-inside-work-tree", "--show-toplevel", "--show-prefix"], check=False)
    lines = out.decode("utf-8", "replace").split("\n")
    if status != 0 or len(lines) < 3 or lines[0] != "true":
        return None
    top = Path(lines[1]).resolve()
    if not (top == folder or top in folder.parents) or not (top == root or root in top.parents):
        raise GitUnavailable("git_worktree_outside: the work tree is not the source folder or above it")
    prefix = lines[2]
    if (prefix and not prefix.endswith("/")) or (top / prefix).resolve() != folder:
        raise GitUnavailable("git_failed: the prefix git reports does not lead to the source folder")
    _, config = repo.git(["config", "--list", "-z", "--show-scope", "--includes"], check=False)
    fields = config.split(b"\0")
    for scope, entry in zip(fields[::2], fields[1::2], strict=False):
        key = entry.split(b"\n", 1)[0].decode("utf-8", "replace").lower()
        if scope in (b"local", b"worktree") and RUNS_COMMANDS.fullmatch(key):
            raise GitUnavailable(f"git_config_runs_commands: the repository's config sets {key}")
    return Repo(folder, root.parent, prefix, deadline, max_bytes)


def ignore_signature(folder: Path, paths: set[str]) -> str:
    """A digest of the size and mtime of each .gitignore among `paths` (the uncommitted and untracked
    ones): when it moves between two reconciles, what belongs may have changed anywhere below."""
    ignores = sorted(p for p in paths if is_ignore_file(p))
    if not ignores:
        return ""
    h = hashlib.sha256()
    for rel in ignores:
        try:
            info = os.lstat(folder / rel)
            h.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{rel}\0gone\0".encode())
    return h.hexdigest()[:32]
