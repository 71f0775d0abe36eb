"""Git-aware sources on real processes: the session's redis-server, one `celery worker`, the API under
gunicorn (hashing embedder), and a git repository the test builds with `git` (commits, a branch, an
uncommitted edit, an untracked file, gitignored files). One stack for the module; its tests run in
order on one repository, each going on from where the one before left it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.gitrepo import commit_all, git, write
from tests.support import BIN, create_collection, search, wait_for, wait_job

pytestmark = pytest.mark.integration

MAIN = {
    "README.md": "# Orchard\nOrchard schedules fruit picking crews across hillside terraces.\n",
    "docs/irrigation.md": "# Irrigation\nDrip lines water the pear rows at dawn.\n",
    "docs/frost.md": "# Frost\nWind machines keep the blossoms above freezing on cold nights.\n",
    "src/planner.py": "import math\n\n\ndef crew_size(trees):\n    \"\"\"Pickers needed for a terrace.\"\"\"\n"
                      "    return math.ceil(trees / 40)\n",
    ".gitignore": "*.log\nsecret.md\n",
}



class Stack:
    def __init__(self, base: str, repo: Path):
        self.base, self.repo = base, repo
        self.source_id = ""
        self.main_commit = ""

    def url(self, tail: str = "") -> str:
        return f"{self.base}/v1/collections/docs/sources/{self.source_id}{tail}"

    def finished(self, job_id: str) -> dict:
        """The reconcile, succeeded; its rebuild (if any) served by the API."""
        job = wait_job(self.base, job_id, timeout=60)
        assert job["state"] == "succeeded", job
        rebuild_id = job["result"].get("rebuild_job_id")
        if rebuild_id:
            rebuild = wait_job(self.base, rebuild_id, timeout=60)
            assert rebuild["state"] == "succeeded", rebuild
            version = rebuild["result"]["version"]
            wait_for(lambda: search(self.base, "anything").json()["index_version"] >= version, timeout=30,
                     message=f"v{version} to be served")
        return job

    def reconcile(self) -> dict:
        resp = requests.post(self.url("/reconcile"), timeout=30)
        assert resp.status_code == 202, resp.text
        return self.finished(resp.json()["id"])

    def dry_run(self) -> dict:
        resp = requests.post(self.url("/reconcile"), json={"dry_run": True}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["source"] == self.source_id
        return resp.json()["plan"]

    def documents(self) -> dict[str, dict]:
        """Every document the served version holds, with its metadata."""
        page = requests.get(f"{self.base}/v1/collections/docs/documents", params={"limit": 100}, timeout=10).json()
        out = {}
        for listed in page["documents"]:
            doc = requests.get(f"{self.base}/v1/collections/docs/documents/{listed['id']}", timeout=10).json()
            out[listed["id"]] = doc["metadata"]
        return out

    def counts(self) -> tuple:
        """What a dry run must not change: jobs, the collection's counts, the source's file state."""
        # Compaction may follow a rebuild on its own; every other job would be the dry run's doing.
        jobs = [j for j in requests.get(f"{self.base}/v1/jobs", params={"limit": 100}, timeout=10).json()["jobs"]
                if j["kind"] != "compact"]
        info = requests.get(f"{self.base}/v1/collections/docs", timeout=10).json()
        source = requests.get(self.url(), timeout=10).json()
        return (sorted((j["id"], j["state"]) for j in jobs), info["documents"], info["chunks"], source["files"],
                source["last_reconcile"], source["git_commit"])


@pytest.fixture(scope="module")
def stack(module_settings, module_procs, tmp_path_factory):
    roots = tmp_path_factory.mktemp("git-roots")
    settings = module_settings.with_(source_roots=str(roots), source_batch_files=2)
    repo = roots / "orchard"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo, MAIN)
    write(repo, {"secret.md": "# Secret\nThe gitignored plum recipe.\n"})
    main_commit = commit_all(repo, "orchard")
    base = module_procs.api(settings)
    module_procs.worker(settings)
    create_collection(base)
    stack = Stack(base, repo)
    stack.main_commit = main_commit
    return stack


def test_first_reconcile_walks_records_the_commit_and_hits_carry_it(stack):
    resp = requests.post(f"{stack.base}/v1/collections/docs/sources", json={"path": "orchard"}, timeout=30)
    assert resp.status_code == 202, resp.text
    stack.source_id = resp.json()["source"]["id"]
    result = stack.finished(resp.json()["job"]["id"])["result"]
    assert (result["walk"], result["git_fallback"], result["git_commit"]) == ("tree", "first_reconcile",
                                                                              stack.main_commit)
    assert result["files_added"] == 4 and result["skipped"] == {"gitignored": 1}
    source = requests.get(stack.url(), timeout=10).json()
    assert source["git_commit"] == stack.main_commit and source["last_reconcile"]["walk"] == "tree"

    hit = search(stack.base, "wind machines blossoms freezing", k=1).json()["hits"][0]
    assert hit["doc_id"] == "docs/frost.md"
    assert hit["metadata"]["source_commit"] == stack.main_commit and hit["metadata"]["source"] == stack.source_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", hit["metadata"]["indexed_at"])
    assert set(stack.documents()) == {"README.md", "docs/irrigation.md", "docs/frost.md", "src/planner.py"}


def test_a_branch_an_uncommitted_edit_and_an_untracked_file_go_through_git_and_the_dry_run_changes_nothing(stack):
    repo = stack.repo
    git(repo, "checkout", "-q", "-b", "harvest")
    write(repo, {"README.md": "# Orchard\nOrchard now also tracks quince grafting schedules.\n",
                 "docs/harvest.md": "# Harvest\nApricots are picked at first light in July.\n"})
    (repo / "docs" / "irrigation.md").unlink()
    harvest = commit_all(repo, "harvest")
    write(repo, {"src/planner.py": MAIN["src/planner.py"] + "\n\ndef ladder_count(crews):\n    return crews * 3\n",
                 "notes.md": "# Notes\nRemember the cherry tarps before the hail season.\n",  # untracked
                 "debug.log": "ignored by *.log\n", "secret.md": "# Secret\nstill ignored, now edited\n"})
    before_docs = stack.documents()
    before = stack.counts()

    plan = stack.dry_run()
    assert (plan["walk"], plan["git_commit"]) == ("git", harvest)
    assert (plan["files_added"], plan["files_changed"], plan["files_removed"]) == (2, 2, 1)
    assert plan["chunks_to_embed"] > 0 and plan["chunks_total"] == plan["chunks_to_embed"] + plan["chunks_cached"]
    assert plan["eta_seconds"] >= 0 and plan["embed_rate_source"] in ("measured", "declared")
    assert stack.counts() == before  # no job, no file state, no count, no commit moved
    assert stack.documents() == before_docs

    result = stack.reconcile()["result"]
    assert (result["walk"], result["git_commit"]) == ("git", harvest)
    assert (result["files_added"], result["files_changed"], result["files_removed"]) == (2, 2, 1)
    assert result["chunks_embedded"] == plan["chunks_to_embed"]
    assert requests.get(stack.url(), timeout=10).json()["git_commit"] == harvest

    docs = stack.documents()
    assert set(docs) == {"README.md", "docs/harvest.md", "docs/frost.md", "src/planner.py", "notes.md"}
    # Exactly the files git named were read again: they carry the new commit and a new indexed_at;
    # the one it did not name still carries the first reconcile's.
    for rel in ("README.md", "docs/harvest.md", "src/planner.py", "notes.md"):
        assert docs[rel]["source_commit"] == harvest, rel
    assert docs["docs/frost.md"] == before_docs["docs/frost.md"]
    assert docs["docs/frost.md"]["source_commit"] == stack.main_commit
    assert search(stack.base, "quince grafting schedules", k=1).json()["hits"][0]["doc_id"] == "README.md"

    again = stack.reconcile()["result"]  # unchanged: git names the same uncommitted files, all unchanged
    assert again["walk"] == "git" and again["chunks_embedded"] == 0 and "rebuild_job_id" not in again


def test_switching_back_embeds_nothing_the_cache_has_seen(stack):
    repo = stack.repo
    git(repo, "checkout", "-q", "main")  # the uncommitted planner.py edit and notes.md come along
    result = stack.reconcile()["result"]
    assert (result["walk"], result["git_commit"]) == ("git", stack.main_commit)
    assert (result["files_added"], result["files_changed"], result["files_removed"]) == (1, 1, 1)
    assert result["chunks_embedded"] == 0 and result["chunks_reused"] == 2  # README and irrigation, from cache
    assert set(stack.documents()) == {"README.md", "docs/irrigation.md", "docs/frost.md", "src/planner.py",
                                      "notes.md"}
    hit = search(stack.base, "drip lines water pear rows", k=1).json()["hits"][0]
    assert hit["doc_id"] == "docs/irrigation.md" and hit["metadata"]["source_commit"] == stack.main_commit

    write(repo, {"notes.md": "# Notes\nThe cherry tarps are folded in the shed.\n"})
    before = stack.counts()
    plan = stack.dry_run()
    assert (plan["files_added"], plan["files_changed"], plan["files_removed"], plan["chunks_to_embed"]) == (0, 1, 0, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")}
    cli = [str(BIN / "swapline"), "--url", stack.base, "source", "reconcile", "docs", stack.source_id, "--dry-run"]
    said = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env)
    assert said.returncode == 0, said.stderr
    assert f"(git at {stack.main_commit[:12]}) would add 0, change 1, remove 0" in said.stdout
    assert "1 chunks to embed, 0 cached" in said.stdout
    said = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert json.loads(said.stdout)["files_changed"] == 1
    assert stack.counts() == before
    bad = requests.post(stack.url("/reconcile"), json={"dry_run": "maybe"}, timeout=10)
    assert bad.status_code == 422
