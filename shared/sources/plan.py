"""What a reconcile of a source would change, decided without changing anything (the reconcile job
applies it; a dry run reports it).

Which files are compared:
- `paths`: only those a watcher saw change (and what lies under them);
- `git`: a source folder in a git work tree whose last reconcile recorded a commit: only what git names
  (changed between that commit and HEAD, uncommitted, untracked and not ignored) plus the files the
  source keeps to recheck (uncommitted, untracked or symlinked then, or read by that reconcile), so an
  unchanged repository costs three git calls, not a walk;
- `tree`: everything else, and a git source when git cannot be trusted this time (`git_fallback` says
  why: no commit recorded yet, a commit git no longer knows, a changed .gitignore, changed rules
  (include, exclude, size cap, built-in defaults, a .gitignore above the folder), no file state after
  a recover, git failing or timing out, a repository config that would run a program). Such a plan
  records no commit; the reconcile job clears the one recorded before it writes anything
  (`shared.sources.reconcile`), so the next reconcile walks too rather than diffing from a commit
  older than what this walk read.

The compared files go through the same rules as a walk (include/exclude, .gitignore, size, symlinks),
then size and mtime against what the collection holds; the content hash only when those moved. A file
named by git or a watcher that is now gone, or can no longer be indexed, is to be tombstoned.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import eventnames as names
from shared.errors import JobCanceled
from shared.jobs.progress import ProgressReporter
from shared.services import Services
from shared.sources.files import content_problem, digest, read_in_source
from shared.sources.gitdiff import MAX_OUTPUT_BYTES, GitUnavailable, Repo, ignore_signature, open_repo, worktree_top
from shared.sources.paths import inside, is_ignore_file
from shared.sources.walk import Entry, Rules, under, walk_tree
from shared.store.sources import FileState

log = logging.getLogger(__name__)

CANCEL_EVERY = 500
# Paths a git source rechecks at its next reconcile; past this the files just read are left out (and
# past it with the uncommitted ones alone, the plan records no commit and the reconcile job clears the
# recorded one: the next reconcile walks).
MAX_RECHECK = 5000

WALK_TREE, WALK_GIT, WALK_PATHS = "tree", "git", "paths"


class PlanTooCostly(Exception):
    """A dry run went past its bound (files, bytes or time)."""


@dataclass
class Plan:
    walk: str
    files: dict[str, Entry]  # the files compared, each passing the walk's rules
    held_count: int  # files the collection held before
    added: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes)
    changed: list[tuple[str, int]] = field(default_factory=list)
    unchanged: int = 0
    touched: dict[str, FileState] = field(default_factory=dict)  # same content, new size/mtime
    gone: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_dirs: int = 0
    git_commit: str | None = None  # HEAD this plan was made at (git work trees only)
    git_fallback: str | None = None
    git_ignores: str | None = None
    git_rules: str = ""  # the rules' fingerprint (Rules.fingerprint)
    recheck: list[str] | None = None  # None: record no commit for this source after this reconcile

    def summary(self) -> dict[str, Any]:
        """The counts a reconcile's plan and result show."""
        seen = len(self.files) if self.walk != WALK_GIT else \
            self.held_count - len(self.gone) + len(self.added)
        out = {"walk": self.walk, "files_seen": seen, "files_examined": len(self.files),
               "files_added": len(self.added), "files_changed": len(self.changed), "files_removed": len(self.gone),
               "files_skipped": sum(self.skipped.values()), "files_secret": self.skipped.get("secret", 0),
               "files_unchanged": self.unchanged if self.walk != WALK_GIT else
               self.held_count - len(self.changed) - len(self.gone),
               "skipped": dict(self.skipped), "skipped_dirs": self.skipped_dirs, "git_commit": self.git_commit}
        if self.git_fallback:
            out["git_fallback"] = self.git_fallback
        return out

    def git_state(self) -> dict | None:
        """What the reconcile's finish records on the source once every file is in: the commit to diff
        from next time (a git work tree), or the files a watcher's reconcile read (to recheck)."""
        if self.walk == WALK_PATHS:
            return {"read": sorted(rel for rel, _ in self.added + self.changed)}
        if self.git_commit is None or self.recheck is None:
            return None
        return {"commit": self.git_commit, "ignores": self.git_ignores or "", "rules": self.git_rules,
                "recheck": self.recheck}


def _root_of(svc: Services, folder: Path) -> Path:
    return next(root for root in svc.settings.source_root_paths if inside(folder, root))


def _git_paths(svc: Services, source: dict, repo: Repo, plan: Plan) -> tuple[set[str] | None, Any]:
    """(paths to compare, or None to walk the tree; git's changes). Sets the plan's git fields."""
    head = repo.head()
    if head is None:
        plan.git_fallback = "no_commit_yet"
        return None, None
    last, held_count = source.get("git_commit"), plan.held_count
    since = last if last and held_count and repo.knows(last) else None
    changes = repo.changes(since, head)
    plan.git_commit, plan.git_ignores = head, ignore_signature(repo.folder, changes.dirty | changes.untracked)
    plan.skipped.update(changes.refused)
    if not last:
        plan.git_fallback = "first_reconcile"
    elif not held_count:
        plan.git_fallback = "no_file_state"
    elif since is None:
        plan.git_fallback = "unknown_commit"
    elif plan.git_rules != (source.get("git_rules") or ""):
        plan.git_fallback = "rules_changed"
    elif any(is_ignore_file(p) for p in changes.committed) or plan.git_ignores != (source.get("git_ignores") or ""):
        plan.git_fallback = "gitignore_changed"
    if plan.git_fallback:
        return None, changes
    return changes.paths | svc.sources.recheck(source["id"]), changes


def _with_cancel(svc: Services, job_id: str, check: Callable[[], None] | None) -> Callable[[], None]:
    """`check`, plus a job's cancel asked every CANCEL_EVERY calls (the walk calls it per folder and per
    named path)."""
    calls = 0

    def checked() -> None:
        nonlocal calls
        calls += 1
        if calls % CANCEL_EVERY == 0 and svc.jobs.cancel_requested(job_id):
            raise JobCanceled(job_id)
        if check is not None:
            check()
    return checked


def make_plan(svc: Services, source: dict, folder: Path, paths: list[str] | None, job_id: str | None = None,
              check: Callable[[], None] | None = None, deadline: float | None = None,
              git_max_bytes: int = MAX_OUTPUT_BYTES) -> Plan:
    """What a reconcile of `source` (its folder checked: `folder`) would do. With `job_id` it reports
    progress and honours cancel; `check` is called often (a dry run's budget raises from it); each git
    call ends by `deadline` (time.monotonic()) and prints at most `git_max_bytes`."""
    if paths is not None and any(is_ignore_file(p) for p in paths):
        paths = None  # a changed .gitignore can change what belongs anywhere below it
    root = _root_of(svc, folder)
    rules = Rules(folder, source["include"], source["exclude"], svc.settings.max_document_bytes,
                  top=worktree_top(folder, root))
    if job_id:
        check = _with_cancel(svc, job_id, check)
    plan = Plan(WALK_PATHS if paths is not None else WALK_TREE, {}, svc.sources.file_count(source["id"]),
                git_rules=rules.fingerprint())
    changes = None
    scope: Collection[str] | None = paths
    try:
        repo = open_repo(folder, root, deadline, git_max_bytes)
        if repo is not None and paths is not None:
            plan.git_commit = repo.head()  # what the watcher's files are read on top of
        elif repo is not None:
            scope, changes = _git_paths(svc, source, repo, plan)
            if scope is not None:
                plan.walk = WALK_GIT
    except GitUnavailable as exc:
        plan.git_commit, plan.git_fallback = None, exc.reason
        log.warning("event=reconcile.git_unavailable source=%s reason=%r", source["id"], exc.reason)
    if job_id:
        svc.jobs.progress(job_id, names.STAGE_WALK, 0, 0)
    if check is not None:
        check()
    held = _held(svc, source["id"], folder, scope, check) if plan.walk == WALK_GIT and scope is not None else \
        svc.sources.files(source["id"])
    walk = walk_tree(rules, scope, check)
    plan.files, plan.skipped_dirs = walk.files, walk.skipped_dirs
    plan.skipped.update(walk.skipped)
    if scope is None:
        in_scope: set[str] = set(held)
    elif plan.walk == WALK_GIT:
        in_scope = _held_under(held, set(scope))
    else:
        in_scope = {p for p in held if under(p, scope)}
    unreadable = _compare(svc, plan, folder, held, job_id, check)
    plan.gone = sorted((in_scope - set(walk.files)) | set(unreadable))
    if changes is not None and plan.git_commit:
        plan.recheck = _recheck(plan, walk.links, changes.dirty | changes.untracked)
    return plan


def _held(svc: Services, source_id: str, folder: Path, scope: Collection[str],
          check: Callable[[], None] | None) -> dict[str, FileState]:
    """What is held of the paths git named: read one by one (an unchanged 80k-file tree names none, and
    reading the whole file state took longer than asking git). A named path that is a folder (a
    submodule) or gone without being held may stand for files held under it: then all is read."""
    names = sorted(scope)
    held = svc.sources.file_states(source_id, names)
    for rel in names:
        if check is not None:
            check()
        if rel not in held:
            try:
                if stat.S_ISDIR(os.lstat(folder / rel).st_mode):
                    return svc.sources.files(source_id)
            except OSError:
                return svc.sources.files(source_id)
    return held


def _held_under(held: Collection[str], scopes: set[str]) -> set[str]:
    """The paths of `held` that are one of `scopes` or lie under one (a submodule or an untracked
    repository git names as one path), in one pass over `held` rather than one per scope."""
    out = set()
    for rel in held:
        parts = rel.split("/")
        if any("/".join(parts[:i]) in scopes for i in range(1, len(parts) + 1)):
            out.add(rel)
    return out


def _recheck(plan: Plan, links: set[str], uncommitted: set[str]) -> list[str] | None:
    """What the next git reconcile compares besides what git names: the files kept now that were
    uncommitted, untracked (or under an untracked folder git named) or symlinked (git will not name
    them once reverted, deleted or retargeted), and the files just read (an edit read now and reverted
    before the next run)."""
    gone = set(plan.gone)
    kept = {p for p in plan.files if p not in gone}
    must = _held_under(kept, uncommitted) | (links & kept)
    read = {rel for rel, _ in plan.added + plan.changed}
    if len(must) > MAX_RECHECK:
        log.warning("event=reconcile.recheck_overflow files=%s note=%r", len(must),
                    "no commit recorded: the next reconcile walks the tree")
        return None
    if len(must | read) <= MAX_RECHECK:
        must |= read
    return sorted(must)


def _compare(svc: Services, plan: Plan, folder: Path, held: dict[str, FileState], job_id: str | None,
             check: Callable[[], None] | None) -> list[str]:
    """Split the plan's files into added, changed, unchanged and touched (same content, new mtime),
    reading only those whose size or mtime moved. Returns held files that can no longer be indexed."""
    candidates = []
    for rel, entry in plan.files.items():
        state = held.get(rel)
        if state is not None and state.size == entry.size and state.mtime_ns == entry.mtime_ns:
            plan.unchanged += 1
        else:
            candidates.append((rel, state))
    progress = ProgressReporter(svc.jobs, job_id, names.STAGE_COMPARE, len(candidates),
                                svc.settings.progress_every) if job_id else None
    unreadable = []
    for i, (rel, state) in enumerate(candidates):
        if check is not None:
            check()
        if job_id and i % CANCEL_EVERY == 0 and svc.jobs.cancel_requested(job_id):
            raise JobCanceled(job_id)
        if progress is not None:
            progress.update(i)
        try:
            info, data, problem = read_in_source(folder, rel, svc.settings.max_document_bytes)
        except FileNotFoundError:
            plan.files.pop(rel, None)
            continue  # gone since the walk: not in the tree
        if problem is None:
            assert data is not None  # a read without a problem holds the bytes
            problem, _ = content_problem(data, svc.settings.max_document_bytes)
        if problem:
            plan.skipped[problem] += 1
            if state is not None:
                unreadable.append(rel)
            continue
        assert info is not None and data is not None  # a read without a problem has both
        new = FileState(info.st_size, info.st_mtime_ns, digest(data))
        if state is not None and state.digest == new.digest:
            plan.touched[rel] = new
        else:
            (plan.changed if state is not None else plan.added).append((rel, len(data)))
    if progress is not None:
        progress.finish()
    return unreadable


def elapsed_check(seconds: float, started: float | None = None) -> Callable[[], None]:
    """A `check` raising PlanTooCostly once `seconds` have passed."""
    deadline = (started if started is not None else time.monotonic()) + seconds

    def check() -> None:
        if time.monotonic() > deadline:
            raise PlanTooCostly(f"planning took over {seconds:g} s")
    return check
