"""The code map in the README, enforced: the table itself is read, so the drawing and the code cannot
drift apart. Every module must be covered by a row, may import only what its row allows (every import
statement counts, those inside functions too: a lazy import is still a dependency), and no modules of
ours may import each other in a circle. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN = ("shared", "workers", "webapp")
FOUNDATION = "the foundation"


def code_map(readme: str) -> dict[str, tuple[str, ...]]:
    """Row path (a folder ending in "/" or a .py file) -> the module prefixes it may import, from the
    README's "Code map" table. "the foundation" stands for the modules of the foundation row."""
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Where", "---"):
            continue
        where = re.findall(r"`([^`]+)`", cells[0])
        allowed = re.findall(r"`([^`]+)`", cells[2])
        rows.append((where, allowed + ([FOUNDATION] if FOUNDATION in cells[2] else []), cells[0]))
    foundation = [w for where, _, text in rows if text.startswith(FOUNDATION) for w in where]
    rules: dict[str, tuple[str, ...]] = {}
    for where, allowed, _ in rows:
        prefixes = []
        for item in allowed:
            # A package's __init__ is covered by the foundation row, but naming it would allow the package.
            prefixes += [f for f in foundation if not f.endswith("__init__.py")] if item == FOUNDATION else [item]
        for path in (w for w in where if w.startswith(OWN)):
            rules[path] = tuple(module_name(p) for p in prefixes if p.startswith(OWN))
    return rules


def module_name(path: str) -> str:
    """`shared/jobs/` -> shared.jobs; `shared/settings.py` -> shared.settings; `shared/` -> shared."""
    name = path.removesuffix("/").removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


RULES = code_map((ROOT / "README.md").read_text())


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


def rule_for(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """The most specific row covering `path` (a file row beats its folder's row)."""
    rel = path.relative_to(ROOT).as_posix()
    matches = [row for row in RULES if rel == row or (row.endswith("/") and rel.startswith(row))]
    if not matches:
        return None
    row = max(matches, key=len)
    return row, RULES[row]


def own_modules() -> dict[str, Path]:
    return {module_name(p.relative_to(ROOT).as_posix()): p
            for folder in OWN for p in sorted((ROOT / folder).rglob("*.py"))}


def test_the_map_has_a_row_for_every_layer():
    for row in ("webapp/api/", "webapp/client/", "webapp/cli/", "webapp/devstack/", "workers/", "shared/store/",
                "shared/jobs/", "shared/sources/", "shared/index/", "shared/search/", "shared/webhooks/",
                "shared/services.py", "shared/celeryconfig.py", "shared/settings.py", "shared/jobstates.py"):
        assert row in RULES, f"the README's code map has no row for {row}"
    assert RULES["shared/store/"] == RULES["shared/keys.py"], "the store imports the foundation only"


def test_every_module_is_covered_by_a_row():
    uncovered = [str(p.relative_to(ROOT)) for p in own_modules().values() if rule_for(p) is None]
    assert not uncovered, "modules no row of the README's code map covers:\n" + "\n".join(uncovered)


@pytest.mark.parametrize("row", sorted(RULES))
def test_each_row_imports_only_what_the_code_map_allows(row):
    files = [p for p in own_modules().values() if (rule_for(p) or ("",))[0] == row]
    assert files, f"the code map names {row}, which holds no module"
    own = module_name(row)
    prefixes = (*RULES[row], own) if row.endswith("/") else RULES[row] + (own,)
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in files for name in sorted(own_imports(path))
             if not allowed(name, prefixes)]
    assert not wrong, "\n".join(wrong)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (a name resolves to the longest module it starts with)."""
    modules = own_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in own_imports(path):
            parts = imported.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != name:
                        targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert not cycles(import_graph())


def test_the_checkers_see_what_they_guard(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from webapp.api.app import create_app\nimport shared.settings\n"
                   "def later():\n    from workers.tasks import ingest\n")
    assert own_imports(bad) == {"webapp.api.app.create_app", "shared.settings", "workers.tasks.ingest"}
    assert not allowed("webapp.api.app.create_app", RULES["webapp/cli/"])
    assert not allowed("shared.jobs.submit", RULES["shared/store/"])
    assert allowed("shared.keys", RULES["shared/store/"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    table = ("## Code map\n| Where | What | May import |\n| --- | --- | --- |\n"
             "| `x/a/` | a | `x/b/`, the foundation |\n| the foundation: `x/f.py` | f | the foundation |\n## Next\n")
    assert code_map(table) == {}  # x is not one of our packages: nothing of ours is allowed
    ours = table.replace("x/", "shared/")
    assert code_map(ours) == {"shared/a/": ("shared.b", "shared.f"), "shared/f.py": ("shared.f",)}


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
