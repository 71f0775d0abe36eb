"""Git repositories made by tests: a fixed identity and no signing, so commits work on any machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

GIT_ID = ["-c", "user.name=Swapline Test", "-c", "user.email=test@swapline.invalid", "-c", "init.defaultBranch=main",
          "-c", "commit.gpgsign=false"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()
