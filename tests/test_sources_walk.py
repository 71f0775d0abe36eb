"""Which files belong to a source, and where a source may live: walks and path checks on real folders."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from shared.sources.filetypes import classify
from shared.sources.paths import SourcePathRefused, check_source_root, file_in_source, resolve_source_path
from shared.sources.walk import Rules, under, walk_tree
from tests.sourcetree import INDEXED, make_tree


def test_default_walk_takes_text_and_code_and_skips_ignored_and_build(tmp_path):
    tree = make_tree(tmp_path / "repo")
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD.md").write_text("not a source file")
    (tree / "node_modules" / "pkg").mkdir(parents=True)
    (tree / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1")
    walk = walk_tree(Rules(tree))
    assert set(walk.files) == INDEXED | {"data/blob.txt"}  # content checks (binary) come later
    assert walk.skipped == {"gitignored": 1}
    assert walk.skipped_dirs == 3  # .git, node_modules, build


def test_nested_gitignore_and_negation_the_deepest_file_decides(tmp_path):
    tree = tmp_path / "repo"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / ".gitignore").write_text("*.md\n!keep.md\nlogs/\n")
    (tree / "a" / ".gitignore").write_text("!*.md\n")
    (tree / "a" / "b" / ".gitignore").write_text("drop.md\n")
    for rel in ("top.md", "keep.md", "a/x.md", "a/b/drop.md", "a/b/y.md", "logs/z.md", "a/logs/w.md"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("# x\n")
    walk = walk_tree(Rules(tree))
    assert set(walk.files) == {"keep.md", "a/x.md", "a/b/y.md"}
    assert walk.skipped["gitignored"] == 2  # top.md, a/b/drop.md (logs/ folders are skipped whole)


def test_include_and_exclude_globs(tmp_path):
    tree = make_tree(tmp_path / "repo")
    walk = walk_tree(Rules(tree, include=["*.md"], exclude=["docs/"]))
    assert set(walk.files) == {"README.md"}
    assert walk.skipped_dirs == 2  # docs/ (excluded) and build/


def test_symlinks_folders_are_not_followed_files_must_stay_inside(tmp_path):
    tree = make_tree(tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.md").write_text("# outside\n")
    (tree / "linked-dir").symlink_to(outside)
    (tree / "out.md").symlink_to(outside / "o.md")
    (tree / "alias.md").symlink_to(tree / "README.md")
    walk = walk_tree(Rules(tree))
    assert "alias.md" in walk.files and "out.md" not in walk.files
    assert not any(rel.startswith("linked-dir") for rel in walk.files)
    assert walk.skipped["symlink_outside"] == 1
    assert file_in_source(tree, "out.md") is None and file_in_source(tree, "../outside/o.md") is None
    assert file_in_source(tree, "docs/guide.md") == tree / "docs" / "guide.md"


def test_a_walk_of_changed_paths_sees_only_those(tmp_path):
    tree = make_tree(tmp_path / "repo")
    walk = walk_tree(Rules(tree), ["docs", "secret.md", "build/output.md", "gone.md"])
    assert set(walk.files) == {"docs/guide.md", "docs/irrigation.md"}
    assert under("docs/guide.md", ["docs"]) and not under("docsx/a.md", ["docs"])


@pytest.mark.parametrize(("name", "expected"), [
    ("README.md", ("markdown", None)), ("a/b.py", ("code", "python")), ("x/kep.yaml", ("code", "yaml")),
    ("notes.txt", ("text", None)), ("Makefile", ("code", "make")), ("weird.xyz", ("text", None))])
def test_classify(name, expected):
    assert classify(name) == expected


def test_source_paths_resolve_inside_the_roots_or_are_refused(tmp_path):
    roots = tmp_path / "roots"
    (roots / "repo" / "sub").mkdir(parents=True)
    (roots / "file.md").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (roots / "escape").symlink_to(outside)
    linked = tmp_path / "linked"
    linked.symlink_to(roots)
    settings = Settings(source_roots=f"{linked}:/nonexistent-root")
    assert resolve_source_path(settings, "repo") == roots / "repo"  # relative to the first root
    assert resolve_source_path(settings, str(roots / "repo" / "sub")) == roots / "repo" / "sub"
    assert resolve_source_path(settings, str(linked / "repo")) == roots / "repo"

    def refused(path: str, settings: Settings = settings) -> tuple[int, str]:
        with pytest.raises(SourcePathRefused) as info:
            resolve_source_path(settings, path)
        return info.value.status, info.value.code

    assert refused("repo/../../outside") == (403, "path_outside_roots")
    assert refused(str(outside)) == (403, "path_outside_roots")
    assert refused("escape") == (403, "path_outside_roots")
    assert refused("/") == (403, "path_outside_roots")
    assert refused(str(outside / "nope")) == (403, "path_outside_roots")  # outside: existence not revealed
    assert refused("nope") == (422, "path_not_found")
    assert refused("file.md") == (422, "path_not_a_folder")
    assert refused("repo", Settings()) == (403, "sources_disabled")
    assert check_source_root(settings, str(roots / "repo")) == roots / "repo"
    with pytest.raises(SourcePathRefused):
        check_source_root(Settings(source_roots=str(outside)), str(roots / "repo"))
