"""The README's configuration tables cover every variable, with its current default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.settings import env_table
from webapp.devstack.launcher import LAUNCHER_ENV

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
ROW = re.compile(r"^\| `(SWAPLINE_[A-Z0-9_]+)` \| ([^|]*) \|", re.M)
ROWS = {m.group(1): m.group(2) for m in ROW.finditer(README)}


@pytest.mark.parametrize(("name", "default"), env_table())
def test_every_setting_is_documented_with_its_default(name, default):
    assert name in ROWS, f"README.md has no configuration row for {name}"
    if default == "":
        assert "(empty)" in ROWS[name], f"README.md shows {ROWS[name]!r} for {name}, not (empty)"
    elif isinstance(default, (int, float, str)) and not isinstance(default, bool):
        assert f"`{default}`" in ROWS[name], f"README.md shows {ROWS[name]!r} for {name}, not {default!r}"


@pytest.mark.parametrize(("name", "default"), [(k, d) for k, (d, _) in LAUNCHER_ENV.items()])
def test_every_launcher_variable_is_documented(name, default):
    assert name in ROWS, f"README.md has no row for {name} (make run option)"
    if default:
        assert f"`{default}`" in ROWS[name]


def test_quickstart_names_the_two_commands():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make run" in quickstart and "make test" in quickstart
