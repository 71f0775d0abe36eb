"""The code map in the README, enforced: which folder may import which (read from the source with ast,
nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder -> (allowed import prefixes among our own packages); a module may always import its own folder.
RULES = {
    "shared": ("shared",),
    "workers": ("workers", "shared"),
    "webapp/api": ("webapp.api", "shared"),
    "webapp/client": ("webapp.client", "shared.jobs.model"),
    "webapp/cli": ("webapp.cli", "webapp.client", "shared.jobs.model"),
    "webapp/devstack": ("webapp.devstack", "webapp.cli", "webapp.client", "webapp.api.gunicorn_conf",
                        "shared.settings"),
}
OWN = ("shared", "workers", "webapp")


def own_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in OWN}


def allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("folder", sorted(RULES))
def test_each_folder_imports_only_what_the_code_map_allows(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in files for name in sorted(own_imports(path))
             if not allowed(name, RULES[folder])]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from webapp.api.app import create_app\nimport shared.settings\n")
    names = own_imports(bad)
    assert names == {"webapp.api.app.create_app", "shared.settings"}
    assert not allowed("webapp.api.app.create_app", RULES["webapp/cli"])


def test_the_benchmark_peer_stays_outside_swapline():
    """txtai is measured from its own venv (tests/bench/peer.py): never a dependency of Swapline, never
    imported by its code."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    assert not [d for d in declared if d.lower().startswith("txtai")]
    importers = []
    for folder in OWN:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                importers += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "txtai"]
    assert not importers
