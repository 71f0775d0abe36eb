"""Git-aware reconcile, unit level: git's output parsed as hostile, the reasons to walk instead, and the
plan of a real git repository (made by the test with `git`) reconciled by the domain code on fakeredis
with the hashing embedder; jobs run by a small pump, in order."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import fakeredis
import pytest

from shared import keys
from shared.jobs.compact import run_compact
from shared.jobs.rebuild import run_rebuild
from shared.settings import Settings
from shared.sources import dryrun
from shared.sources.batch import run_batch
from shared.sources.dryrun import DryRunBusy, dry_run
from shared.sources.gitdiff import GitUnavailable, open_repo, run_git, split_paths
from shared.sources.plan import PlanTooCostly, elapsed_check, make_plan
from shared.sources.reconcile import run_reconcile
from shared.sources.submit import add_source, submit_reconcile
from shared.sources.walk import Rules, walk_tree
from tests.gitrepo import commit_all, git, write
from tests.support import make_services

# ---- git's output, hostile


def test_paths_from_git_are_checked_like_walked_ones():
    refused: Counter = Counter()
    out = b"\0".join([b"ok.md", b"sub/dir/x.py", b"../escape.md", b"/etc/passwd", b"a//b.md", b"a/./b.md",
                      b"bad\xff.md", b"new\nline.md", b"back\\slash.md", b"x" * 5000, b"", b"other/y.md"])
    assert split_paths(out, "", refused) == {"ok.md", "sub/dir/x.py", "other/y.md"}
    assert refused["git_path_refused"] == 8
    refused.clear()
    # Under a prefix (a source that is a subfolder of the repository): outside it is dropped quietly.
    assert split_paths(out, "sub/", refused) == {"dir/x.py"}
    refused.clear()
    assert split_paths(b"sub/\0sub/../x", "sub/", refused) == set() and refused["git_path_refused"] == 2
    # A folder git prints as one (an untracked repository inside the work tree) is kept, as a folder.
    refused.clear()
    assert split_paths(b"sub/nested/\0sub/x//", "sub/", refused) == {"nested"} and refused["git_path_refused"] == 1


@pytest.fixture
def fake_git(tmp_path, monkeypatch):
    """A `git` first on PATH that does what the test writes into it."""
    folder = tmp_path / "fakebin"
    folder.mkdir()

    def install(script: str) -> None:
        path = folder / "git"
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return install


def test_git_is_bounded_in_time_and_output_and_sees_no_git_environment(fake_git, tmp_path, monkeypatch):
    fake_git("exec sleep 30\n")
    with pytest.raises(GitUnavailable, match="git_timeout"):
        run_git(tmp_path, tmp_path.parent, ["diff"], timeout=0.5)
    fake_git("exec yes\n")
    with pytest.raises(GitUnavailable, match="git_output_too_large"):
        run_git(tmp_path, tmp_path.parent, ["diff"], max_bytes=100_000)
    fake_git("echo boom >&2; exit 3\n")
    with pytest.raises(GitUnavailable, match="exited 3: boom"):
        run_git(tmp_path, tmp_path.parent, ["diff"])
    monkeypatch.setenv("GIT_DIR", "/somewhere/else")
    fake_git('echo "$GIT_DIR|$GIT_OPTIONAL_LOCKS|$GIT_CEILING_DIRECTORIES|$*"\n')
    _, out = run_git(tmp_path, tmp_path.parent, ["diff"])
    line = out.decode().strip()
    assert line.startswith(f"|0|{tmp_path.parent}|--no-pager --no-optional-locks") and "core.fsmonitor=false" in line


def test_which_folders_are_asked_about(tmp_path):
    root = tmp_path / "roots"
    plain = root / "plain"
    plain.mkdir(parents=True)
    assert open_repo(plain, root) is None
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "sub").mkdir()
    assert open_repo(repo, root).prefix == ""
    assert open_repo(repo / "sub", root).prefix == "sub/"
    # A repository above the source root is never discovered (GIT_CEILING_DIRECTORIES).
    git(tmp_path, "init", "-q")
    assert open_repo(plain, root) is None
    # A repository whose own config would run a program on a read-only diff is not asked.
    git(repo, "config", "filter.evil.clean", "touch /tmp/pwned")
    with pytest.raises(GitUnavailable, match="git_config_runs_commands"):
        open_repo(repo, root)
    git(repo, "config", "--unset", "filter.evil.clean")
    assert open_repo(repo, root) is not None
    # ... also when an included file declares it.
    (tmp_path / "inc.cfg").write_text('[filter "lfs2"]\n\tprocess = touch /tmp/pwned\n')
    git(repo, "config", "include.path", str(tmp_path / "inc.cfg"))
    with pytest.raises(GitUnavailable, match="filter.lfs2.process"):
        open_repo(repo, root)


# ---- the plan of a real repository, domain code on fakeredis


class Env:
    def __init__(self, tmp_path: Path):
        self.queue: list[tuple[str, str]] = []
        self.roots = tmp_path / "roots"
        self.repo = self.roots / "repo"
        self.repo.mkdir(parents=True)
        settings = Settings(embedder="hash", data_dir=tmp_path / "data", source_roots=str(self.roots),
                            source_batch_files=50)
        self.svc = make_services(settings, fakeredis.FakeRedis(decode_responses=True), enqueued=self.queue)
        self.svc.collections.create("docs")
        self.source: dict = {}

    def pump(self) -> None:
        runners = {"reconcile": run_reconcile, "ingest_files": run_batch, "rebuild": run_rebuild,
                   "compact": run_compact}
        while self.queue:
            kind, job_id = self.queue.pop(0)
            runners[kind](self.svc, job_id)

    def add(self, path: str = "repo") -> dict:
        self.source, job = add_source(self.svc, "docs", path, [], [], False)
        self.pump()
        return self.svc.jobs.get(job["id"])

    def reconcile(self, paths: list[str] | None = None) -> dict:
        job = submit_reconcile(self.svc, self.svc.sources.get(self.source["id"]), paths)
        self.pump()
        return self.svc.jobs.get(job["id"])

    def held(self) -> set[str]:
        return set(self.svc.sources.files(self.source["id"]))


@pytest.fixture
def env(tmp_path):
    env = Env(tmp_path)
    git(env.repo, "init", "-q")
    write(env.repo, {"a.md": "# A\nalpha\n", "b.md": "# B\nbravo\n", "docs/c.md": "# C\ncharlie\n",
                     ".gitignore": "*.log\nscratch/\n", "link-target.md": "# T\ntarget\n"})
    (env.repo / "link.md").symlink_to("link-target.md")
    env.first_commit = commit_all(env.repo, "first")
    return env


def test_first_reconcile_walks_and_records_the_commit_then_an_unchanged_one_asks_git(env):
    first = env.add()["result"]
    assert (first["walk"], first["git_fallback"], first["git_commit"]) == ("tree", "first_reconcile", env.first_commit)
    assert env.held() == {"a.md", "b.md", "docs/c.md", "link-target.md", "link.md"}
    source = env.svc.sources.get(env.source["id"])
    assert source["git_commit"] == env.first_commit
    assert env.svc.sources.recheck(env.source["id"]) == env.held()  # all just read (under MAX_RECHECK)
    assert env.svc.storage.read_sources("docs")[0]["git_commit"] == env.first_commit  # recover keeps it

    again = env.reconcile()["result"]
    assert (again["walk"], again["git_commit"], again["files_added"], again["files_changed"]) == \
        ("git", env.first_commit, 0, 0)
    assert again["files_unchanged"] == 5 and again["chunks_embedded"] == 0 and "rebuild_job_id" not in again
    assert env.svc.sources.recheck(env.source["id"]) == {"link.md"}  # the symlink; nothing read, nothing dirty
    plan = env.svc.jobs.get(env.reconcile()["id"])
    assert plan["result"]["files_seen"] == 5


def test_commits_edits_untracked_and_ignored_files_reach_exactly_the_right_plan(env):
    env.add()
    write(env.repo, {"a.md": "# A\nalpha, edited and committed\n", "new.md": "# New\ncommitted new file\n"})
    (env.repo / "b.md").unlink()
    second = commit_all(env.repo, "second")
    write(env.repo, {"docs/c.md": "# C\ncharlie, an uncommitted edit\n", "untracked.md": "# U\nnot added\n",
                     "debug.log": "ignored\n", "scratch/notes.md": "# S\nignored folder\n"})
    result = env.reconcile()["result"]
    assert (result["walk"], result["git_commit"]) == ("git", second)
    assert (result["files_added"], result["files_changed"], result["files_removed"]) == (2, 2, 1)
    assert env.held() == {"a.md", "new.md", "docs/c.md", "untracked.md", "link-target.md", "link.md"}
    present = env.svc.collections.doc_locations("docs", ["a.md", "b.md", "new.md", "untracked.md", "debug.log",
                                                         "scratch/notes.md"])
    assert set(present) == {"a.md", "new.md", "untracked.md"}
    # The uncommitted edit and the untracked file are rechecked next time even once git stops naming
    # them: the edit reverted, the untracked file deleted.
    assert {"docs/c.md", "untracked.md"} <= env.svc.sources.recheck(env.source["id"])
    git(env.repo, "checkout", "--", "docs/c.md")
    (env.repo / "untracked.md").unlink()
    result = env.reconcile()["result"]
    assert (result["walk"], result["files_changed"], result["files_removed"]) == ("git", 1, 1)
    assert "untracked.md" not in env.held()


def test_a_branch_switch_embeds_only_what_the_cache_never_saw(env):
    env.add()
    git(env.repo, "checkout", "-q", "-b", "topic")
    write(env.repo, {"topic.md": "# Topic\nonly on the topic branch\n", "a.md": "# A\nalpha on topic\n"})
    commit_all(env.repo, "topic")
    on_topic = env.reconcile()["result"]
    assert (on_topic["walk"], on_topic["files_added"], on_topic["files_changed"]) == ("git", 1, 1)
    assert on_topic["chunks_embedded"] == 2
    git(env.repo, "checkout", "-q", "main")
    back = env.reconcile()["result"]
    assert (back["walk"], back["files_changed"], back["files_removed"]) == ("git", 1, 1)
    assert back["chunks_embedded"] == 0 and back["chunks_reused"] == 1  # main's a.md was embedded before
    assert back["git_commit"] == env.first_commit


def test_reasons_to_walk_instead(env, fake_git, monkeypatch):
    env.add()
    # A .gitignore change (committed or not) can change what belongs anywhere: walk.
    write(env.repo, {".gitignore": "*.log\n"})
    assert env.reconcile()["result"]["git_fallback"] == "gitignore_changed"
    commit_all(env.repo, "ignore less")
    assert env.reconcile()["result"]["git_fallback"] == "gitignore_changed"
    assert env.reconcile()["result"]["walk"] == "git"
    # A recorded commit git does not know (history rewritten, another clone): walk.
    env.svc.sources.set_git_state(env.source["id"], "0" * 40, "", [])
    result = env.reconcile()["result"]
    assert (result["walk"], result["git_fallback"]) == ("tree", "unknown_commit")
    # No file state (after a recover): walk.
    env.svc.redis.delete(keys.source_files(env.source["id"]))
    assert env.reconcile()["result"]["git_fallback"] == "no_file_state"
    # git failing: walk, record no commit and forget the old one (the next reconcile walks too).
    fake_git("exit 1\n")
    result = env.reconcile()["result"]
    assert result["walk"] == "tree" and result["git_commit"] is None
    assert env.svc.sources.get(env.source["id"])["git_commit"] is None


def test_a_failed_reconcile_records_no_commit(env, monkeypatch):
    env.add()
    write(env.repo, {"a.md": "# A\nchanged\n"})
    head = commit_all(env.repo, "change")
    import shared.sources.batch as batch

    def broken(*args, **kwargs):
        raise OSError("disk went away")
    monkeypatch.setattr(batch, "read_documents", broken)
    job = env.reconcile()
    assert job["state"] == "failed"
    assert env.svc.sources.get(env.source["id"])["git_commit"] == env.first_commit != head


def test_a_watchers_reconcile_adds_what_it_read_to_the_recheck(env):
    env.add()
    write(env.repo, {"b.md": "# B\nan edit the watcher saw\n"})
    result = env.reconcile(["b.md"])["result"]
    assert result["walk"] == "paths" and result["files_changed"] == 1
    assert "b.md" in env.svc.sources.recheck(env.source["id"])
    git(env.repo, "checkout", "--", "b.md")  # reverted: git names nothing, the recheck finds it
    assert env.reconcile()["result"]["files_changed"] == 1


def test_dry_run_plans_without_changing_anything(env):
    env.add()
    write(env.repo, {"a.md": "# A\nalpha\n\n## More\nsomething new to embed\n", "fresh.md": "# B\nbravo\n"})
    before = (dict(env.svc.redis.hgetall(keys.source_files(env.source["id"]))),
              env.svc.sources.get(env.source["id"]), env.svc.collections.info("docs"))
    source = env.svc.sources.get(env.source["id"])
    plan = dry_run(env.svc, source)
    assert (plan["walk"], plan["files_added"], plan["files_changed"], plan["files_removed"]) == ("git", 1, 1, 0)
    # a.md: its first chunk's text was embedded before, "More" was not; fresh.md holds b.md's text.
    assert (plan["chunks_total"], plan["chunks_to_embed"], plan["chunks_cached"]) == (3, 1, 2)
    assert plan["embed_rate_source"] == "declared" and plan["eta_seconds"] == round(1 / plan["embed_rate"], 1)
    assert plan["embed_rate_source"] in ("measured", "declared") and plan["eta_seconds"] >= 0
    after = (dict(env.svc.redis.hgetall(keys.source_files(env.source["id"]))),
             env.svc.sources.get(env.source["id"]), env.svc.collections.info("docs"))
    assert after == before and not env.queue
    done = env.reconcile()["result"]  # the reconcile then does what the dry run said
    assert (done["files_added"], done["files_changed"], done["chunks_embedded"]) == (1, 1, 1)
    with pytest.raises(PlanTooCostly):
        make_plan(env.svc, source, env.repo.resolve(), None, check=elapsed_check(-1))


# ---- a source that is a subfolder of the repository


def test_a_subfolder_sources_untracked_files_are_named_from_the_folder(env):
    """ls-files prints paths from the folder unless told --full-name; diff prints them from the top."""
    write(env.repo, {"docs/new.md": "# N\nnew\n", "docs/docs/x.md": "# X\nnested docs\n", "top.md": "# T\n"})
    repo = open_repo((env.repo / "docs").resolve(), env.roots.resolve())
    found = repo.changes(None, repo.head())
    assert found.untracked == {"new.md", "docs/x.md"} and not found.refused

    env.add("repo/docs")
    write(env.repo, {"docs/later.md": "# L\nlater\n", "docs/docs/y.md": "# Y\nlater, deeper\n"})
    result = env.reconcile()["result"]
    assert (result["walk"], result["files_added"]) == ("git", 2)
    assert env.held() == {"c.md", "new.md", "docs/x.md", "later.md", "docs/y.md"}


def test_gitignore_files_above_a_subfolder_source_count_in_the_walk_as_in_git(env):
    write(env.repo, {".gitignore": "*.log\nscratch/\nprivate.md\n", "docs/private.md": "# P\nprivate\n",
                     "docs/public.md": "# P\npublic\n"})
    commit_all(env.repo, "ignore private")
    first = env.add("repo/docs")["result"]
    assert first["walk"] == "tree" and env.held() == {"c.md", "public.md"}
    assert first["skipped"].get("gitignored") == 1
    write(env.repo, {"docs/private.md": "# P\nprivate, edited\n"})
    result = env.reconcile()["result"]
    assert result["walk"] == "git" and env.held() == {"c.md", "public.md"}
    # Editing the .gitignore above changes the rules' fingerprint: the next reconcile walks.
    write(env.repo, {".gitignore": "*.log\n"})
    result = env.reconcile()["result"]
    assert (result["walk"], result["git_fallback"]) == ("tree", "rules_changed")
    assert env.held() == {"c.md", "public.md", "private.md"}


def test_a_gitignore_above_that_ignores_the_source_folder_ignores_all_of_it(tmp_path):
    top = tmp_path / "top"
    write(top, {".gitignore": "docs/\n", "docs/a.md": "# A\n"})
    rules = Rules(top / "docs", top=top)
    assert rules.above_ignored and walk_tree(rules).files == {}
    assert walk_tree(Rules(top / "docs")).files.keys() == {"a.md"}


def test_an_untracked_repository_inside_is_walked_then_rechecked(env):
    env.add()
    nested = env.repo / "nested"
    nested.mkdir()
    git(nested, "init", "-q")
    write(nested, {"n.md": "# N\nnested\n", "deep/m.md": "# M\ndeeper\n"})
    result = env.reconcile()["result"]
    assert (result["walk"], result["files_added"]) == ("git", 2)
    assert {"nested/n.md", "nested/deep/m.md"} <= env.held()
    write(nested, {"n.md": "# N\nnested, edited\n"})
    assert env.reconcile()["result"]["files_changed"] == 1
    subprocess.run(["rm", "-rf", str(nested)], check=True)
    result = env.reconcile()["result"]
    assert (result["walk"], result["files_removed"]) == ("git", 2)
    assert not {"nested/n.md", "nested/deep/m.md"} & env.held()


def test_changed_rules_make_a_git_source_walk(env):
    env.add()
    assert env.reconcile()["result"]["walk"] == "git"
    env.svc.redis.hset(keys.source(env.source["id"]), "exclude", '["docs/"]')
    result = env.reconcile()["result"]
    assert (result["walk"], result["git_fallback"], result["files_removed"]) == ("tree", "rules_changed", 1)
    assert env.reconcile()["result"]["walk"] == "git"


# ---- a reconcile that walks forgets the recorded commit


def test_a_walk_forgets_the_old_commit_so_a_revert_of_what_it_read_is_seen(env, fake_git):
    real_git = shutil.which("git")
    env.add()
    assert env.reconcile()["result"]["walk"] == "git"  # the recheck is now {link.md} alone
    write(env.repo, {"a.md": "# A\nan uncommitted edit, read by a walk\n"})
    fake_git("exit 1\n")
    result = env.reconcile()["result"]
    assert (result["walk"], result["files_changed"]) == ("tree", 1)
    assert env.svc.sources.get(env.source["id"])["git_commit"] is None
    assert env.svc.storage.read_sources("docs")[0].get("git_commit") is None
    fake_git(f'exec {real_git} "$@"\n')
    git(env.repo, "checkout", ".")  # the edit reverted: git would name nothing
    result = env.reconcile()["result"]
    assert (result["walk"], result["git_fallback"], result["files_changed"]) == ("tree", "first_reconcile", 1)
    assert env.reconcile()["result"]["walk"] == "git"


def test_a_git_reconcile_that_fails_keeps_what_it_read_rechecked(env, monkeypatch):
    env.add()
    assert env.reconcile()["result"]["walk"] == "git"
    write(env.repo, {"a.md": "# A\nan uncommitted edit\n"})
    import shared.sources.batch as batch

    def broken(*args, **kwargs):
        raise OSError("disk went away")
    monkeypatch.setattr(batch, "read_documents", broken)
    assert env.reconcile()["state"] == "failed"
    assert "a.md" in env.svc.sources.recheck(env.source["id"])


# ---- a hostile repository: a folder swapped for a symlink to /


def test_a_folder_replaced_by_a_symlink_to_root_is_not_walked(env, monkeypatch):
    write(env.repo, {"l/usr": "a file\n", "l/usr.md": "# U\nunder l\n"})
    commit_all(env.repo, "l is a folder")
    env.add()
    assert "l/usr.md" in env.held()
    subprocess.run(["rm", "-rf", str(env.repo / "l")], check=True)
    (env.repo / "l").symlink_to("/")
    commit_all(env.repo, "l is a link to /")
    walked = []
    real_walk = os.walk

    def spy(top, *args, **kwargs):
        walked.append(str(top))
        return real_walk(top, *args, **kwargs)
    monkeypatch.setattr(os, "walk", spy)
    result = env.reconcile()["result"]
    assert result["walk"] == "git" and result["files_removed"] == 1
    assert walked == [] and not any(p.startswith("l/") for p in env.held())
    # Named directly too: nothing beneath a symlinked parent is stat-ed or walked.
    found = walk_tree(Rules(env.repo.resolve()), ["l/usr", "l/usr/share", "l"])
    assert found.files == {} and walked == []


def test_the_walk_of_named_paths_checks_its_budget_per_path(tmp_path):
    write(tmp_path, {f"f{i}.md": "x\n" for i in range(5)})
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise PlanTooCostly("budget")
    with pytest.raises(PlanTooCostly):
        walk_tree(Rules(tmp_path), [f"f{i}.md" for i in range(5)], check)


# ---- the dry run's bounds


def test_a_dry_run_gives_git_only_what_is_left_of_its_time(env, fake_git, monkeypatch):
    env.add()
    monkeypatch.setattr(dryrun, "MAX_SECONDS", 0.5)
    fake_git("exec sleep 5\n")
    started = time.monotonic()
    with pytest.raises(PlanTooCostly):
        dry_run(env.svc, env.svc.sources.get(env.source["id"]))
    assert time.monotonic() - started < 3


def test_a_dry_run_checks_its_budget_per_file_it_chunks(env, monkeypatch):
    env.add()
    write(env.repo, {f"new{i}.md": f"# N{i}\nnew {i}\n" for i in range(3)})
    reads = []
    real_read = dryrun.read_documents

    def counting(*args, **kwargs):
        reads.append(1)
        return real_read(*args, **kwargs)

    def check_after_a_read(seconds, started=None):
        def check() -> None:
            if reads:
                raise PlanTooCostly("budget")
        return check
    monkeypatch.setattr(dryrun, "read_documents", counting)
    monkeypatch.setattr(dryrun, "elapsed_check", check_after_a_read)
    with pytest.raises(PlanTooCostly):
        dry_run(env.svc, env.svc.sources.get(env.source["id"]))
    assert len(reads) == 1


def test_one_dry_run_at_a_time_in_a_process(env):
    env.add()
    source = env.svc.sources.get(env.source["id"])
    with dryrun._slot(), pytest.raises(DryRunBusy):
        dry_run(env.svc, source)
    assert dry_run(env.svc, source)["walk"] == "git"  # the slot is free again


def test_dry_run_chunk_counts_add_up_when_chunks_repeat(env):
    env.add()
    same = "# Twin\nthe very same text in two files\n"
    write(env.repo, {"twin1.md": same, "twin2.md": same, "copy.md": "# A\nalpha\n"})
    plan = dry_run(env.svc, env.svc.sources.get(env.source["id"]))
    assert plan["files_added"] == 3
    assert (plan["chunks_total"], plan["chunks_to_embed"], plan["chunks_cached"]) == (2, 1, 1)
