"""python -m tests.bench.gitrepo: an unchanged git repository of 80,000 files, reconciled by walking the
tree and by asking git, as the reconcile job's own duration.

The repository is generated once (BENCH_GIT_REPO, default /tmp/swapline-gitbench-80k: BENCH_GIT_FILES
small markdown and Python files in folders of 200, `git add` and one commit; a few minutes) and reused
by later runs. Each run starts its own redis-server and calls the domain code directly (no Celery):

1. the collection's file state is seeded as a first reconcile records it (each file's size, mtime and
   content hash), without embedding 80,000 documents, and the source records HEAD as its indexed commit;
2. `tree`: the commit is forgotten, so the reconcile walks and stats every file (none changed, so none
   is read), then records the commit again;
3. `git`: the reconcile asks git what changed since the commit (nothing) and compares only that.

Each is run BENCH_GIT_RUNS times (default 3); printed: each job's duration (started_at to finished_at
of the job hash) and the median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from shared.jobstates import SUCCEEDED
from shared.settings import Settings
from shared.sources.files import digest
from shared.sources.reconcile import run_reconcile
from shared.sources.submit import submit_reconcile
from shared.store.sources import FileState
from tests.support import make_services, start_redis_server

GIT_ID = ["-c", "user.name=Swapline Bench", "-c", "user.email=bench@swapline.invalid", "-c", "init.defaultBranch=main",
          "-c", "commit.gpgsign=false"]


def say(text: str) -> None:
    print(text, flush=True)


def generate(repo: Path, files: int) -> None:
    """`files` small files in folders of 200 under `repo`, committed once."""
    if (repo / ".git").is_dir() and (repo / ".generated").exists():
        say(f"reusing {repo}")
        return
    started = time.monotonic()
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for i in range(files):
        folder = repo / f"pkg{i // 2000:03d}" / f"mod{(i // 200) % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            (folder / f"f{i:06d}.py").write_text(f'"""Module {i}."""\n\n\ndef value_{i}():\n    return {i}\n')
        else:
            (folder / f"f{i:06d}.md").write_text(f"# Note {i}\nThe note numbered {i} says little.\n")
    (repo / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", *GIT_ID, "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", *GIT_ID, "commit", "-q", "-m", "generated"], cwd=repo, check=True)
    (repo / ".generated").write_text("")  # untracked marker, not an included extension
    say(f"generated {files} files in {repo} in {time.monotonic() - started:.1f} s")


def seed(svc, source: dict, repo: Path) -> int:
    """The file state a first reconcile records, and HEAD as the indexed commit."""
    held = {}
    for path in repo.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.suffix in (".md", ".py"):
            data = path.read_bytes()
            info = path.stat()
            held[path.relative_to(repo).as_posix()] = FileState(info.st_size, info.st_mtime_ns, digest(data))
    items = list(held.items())
    for start in range(0, len(items), 5000):
        svc.sources.record_files(source["id"], dict(items[start:start + 5000]), [])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()
    svc.sources.set_git_state(source["id"], head, "", [])
    return len(held)


def job_seconds(svc, job_id: str) -> tuple[float, dict]:
    raw = svc.jobs.get(job_id)
    assert raw["state"] == SUCCEEDED, raw
    fields = svc.jobs.raw(job_id)
    return float(fields["finished_at"]) - float(fields["started_at"]), raw["result"]


def reconcile_once(svc, source_id: str, queue: list) -> tuple[float, dict]:
    job = submit_reconcile(svc, svc.sources.get(source_id))
    queue.clear()
    run_reconcile(svc, job["id"])
    return job_seconds(svc, job["id"])


def main() -> None:
    files = int(os.environ.get("BENCH_GIT_FILES", "80000"))
    repo = Path(os.environ.get("BENCH_GIT_REPO", f"/tmp/swapline-gitbench-{files // 1000}k"))
    runs = int(os.environ.get("BENCH_GIT_RUNS", "3"))
    generate(repo, files)
    with tempfile.TemporaryDirectory(prefix="swapline-gitbench-") as tmp:
        (Path(tmp) / "redis").mkdir()
        proc, url, _ = start_redis_server(Path(tmp) / "redis")
        try:
            settings = Settings(redis_url=url, data_dir=Path(tmp) / "data", embedder="hash",
                                source_roots=str(repo.parent))
            queue: list = []
            svc = make_services(settings, redis.Redis.from_url(url, decode_responses=True), enqueued=queue)
            svc.collections.create("bench")
            source = svc.sources.create("bench", str(repo.resolve()), [], [], False)
            started = time.monotonic()
            held = seed(svc, source, repo)
            say(f"seeded the file state of {held} files in {time.monotonic() - started:.1f} s")
            for walk in ("tree", "git"):
                seconds = []
                for _ in range(runs):
                    if walk == "tree":
                        commit = svc.sources.get(source["id"])["git_commit"]
                        svc.sources.clear_git_state(source["id"])
                    took, result = reconcile_once(svc, source["id"], queue)
                    assert result["walk"] == walk and result["files_unchanged"] == held, result
                    assert result["files_added"] == result["files_changed"] == result["files_removed"] == 0, result
                    if walk == "tree":
                        assert result["git_commit"] == commit
                    seconds.append(took)
                say(f"unchanged reconcile of {held} files, walk={walk}: job seconds "
                    f"{', '.join(f'{s:.3f}' for s in seconds)} (median {statistics.median(seconds):.3f})")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
