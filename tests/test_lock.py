"""The hashed lock (`requirements.lock`) is what `make install`, `.ci/run` and the Dockerfile install, with
`--no-deps` for Swapline itself: a dependency declared in pyproject.toml but missing from the lock would
install nowhere. Regenerate with `make lock`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["test"]
    return {canonical(re.match(r"[A-Za-z0-9._-]+", spec).group(0)) for spec in specs}


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    return {canonical(name): version for name, version in pins}


def test_every_declared_dependency_is_in_the_lock():
    missing = sorted(declared() - set(locked()))
    assert not missing, f"declared in pyproject.toml but not in requirements.lock (run `make lock`): {missing}"


def test_the_lock_pins_the_cpu_torch_from_local_disk():
    assert locked()["torch"].startswith("2.13.0")
    text = (ROOT / "requirements.lock").read_text()
    assert "nvidia" not in text and "--index-url" not in text and "--find-links" not in text


def test_the_checker_sees_a_missing_dependency(tmp_path):
    assert canonical("Flask_Smorest") == "flask-smorest"
    assert {"limits", "detect-secrets", "pytest-xdist"} <= declared()
