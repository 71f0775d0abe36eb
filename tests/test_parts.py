"""Format 2 on disk: parts shared by versions, collected by reference, checked by checksum; and the
upgrade from format 1 (a data dir written by the release before, tests/fixtures/format1).

The rebuilds run the real domain code (run_rebuild) on fakeredis with the hashing embedder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fakeredis
import pytest

from shared.index.parts import (
    PARTS,
    PartCache,
    PartsVersion,
    open_version,
    verify_version,
)
from shared.index.vectorindex import LoadedVersion, VerifyFailed, read_manifest
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import request_rebuild, submit_documents
from shared.jobs.versions import collect_versions
from shared.jobstates import SUCCEEDED
from shared.search.engine import search
from shared.settings import Settings
from tests.fixtures.make_format1 import answers_of, restore
from tests.support import make_services, version_disk_bytes

FIXTURE = Path(__file__).parent / "fixtures" / "format1"


class Stack:
    def __init__(self, data_dir: Path, collection: str = "docs", **overrides):
        self.settings = Settings(embedder="hash", data_dir=data_dir, redis_url="redis://unused/0", build_step=64,
                                 **overrides)
        self.client = fakeredis.FakeRedis(decode_responses=True)
        self.svc = make_services(self.settings, self.client)
        self.name = collection

    def ingest(self, docs: list[dict]) -> None:
        job = submit_documents(self.svc, self.name, docs, rebuild=False)
        run_ingest(self.svc, job["id"])
        assert self.svc.jobs.state(job["id"]) == SUCCEEDED

    def rebuild(self, force: bool = False) -> dict:
        job, _ = request_rebuild(self.svc, self.name, exclusive=False, force=force)
        run_rebuild(self.svc, job["id"])
        done = self.svc.jobs.get(job["id"])
        assert done["state"] == SUCCEEDED, done
        return done["result"]

    def version_dir(self, version: int) -> Path:
        return self.svc.storage.version_dir(self.name, version)

    def part_dir(self, name: str) -> Path:
        return self.svc.storage.part_dir(self.name, name)

    def embed(self, text: str):
        return self.svc.embedder.embed([text])[0]


def _docs(ids: list[str], variant: str = "") -> list[dict]:
    return [{"id": i, "text": f"# Part {i}\nNote {i}{variant} about widget{len(i)} and gizmo {i}.",
             "metadata": {"team": "red" if i.endswith(("1", "3")) else "blue"}} for i in ids]


@pytest.fixture
def stack(tmp_path) -> Stack:
    s = Stack(tmp_path / "data")
    s.svc.collections.create("docs")
    return s


def test_collection_deletes_a_part_only_when_no_kept_version_references_it(stack):
    stack.ingest(_docs([f"d{i}" for i in range(40)]))
    first = stack.rebuild()["version"]
    versions = [first]
    for round_ in range(7):
        stack.ingest(_docs([f"d{round_}", f"n{round_}"], f"edit{round_}"))
        versions.append(stack.rebuild()["version"])
    # Kept: the last 5 published (settings.versions_keep); each rebuild collected what fell out.
    kept = sorted(int(p.name[1:]) for p in stack.svc.storage.indexes_dir("docs").iterdir() if p.name[0] == "v")
    assert kept == versions[-5:]
    referenced = {part["name"] for v in kept for part in read_manifest(stack.version_dir(v))["parts"]}
    on_disk = {p.name for p in (stack.svc.storage.indexes_dir("docs") / "parts").iterdir()}
    assert on_disk == referenced
    assert f"p{first}" in referenced  # the first part is still used by every kept version
    for version in kept:  # every kept version still verifies and answers
        verify_version(stack.version_dir(version))
        opened = open_version(stack.version_dir(version), version)
        assert opened.vectors == 40 + versions.index(version) and search(opened, "gizmo d3", 3, "keyword", None,
                                                                           stack.embed).hits
    # A part a build in flight wrote (fence above the published pointer) is left alone.
    future = stack.part_dir(f"p{versions[-1] + 5}")
    future.mkdir(parents=True)
    collect_versions(stack.svc, "docs")
    assert future.is_dir()


def test_kept_versions_share_their_parts_on_disk(stack):
    stack.ingest(_docs([f"d{i}" for i in range(300)]))
    stack.rebuild()
    for round_ in range(4):
        stack.ingest(_docs([f"d{round_ * 3}"], f"edit{round_}"))
        last = stack.rebuild()["version"]
    indexes = stack.svc.storage.indexes_dir("docs")
    total = sum(f.stat().st_size for f in indexes.rglob("*") if f.is_file())
    one = version_disk_bytes(stack.version_dir(last))
    assert total <= 1.5 * one, (total, one)


def test_a_corrupted_shared_part_is_caught_by_verify_and_at_load(stack):
    stack.ingest(_docs([f"d{i}" for i in range(30)]))
    first = stack.rebuild()["version"]
    stack.ingest(_docs(["d1"], "edited"))
    second = stack.rebuild()["version"]
    assert [p["name"] for p in read_manifest(stack.version_dir(second))["parts"]] == [f"p{first}", f"p{second}"]
    shared = stack.part_dir(f"p{first}") / "records.arrow"
    stat = shared.stat()
    with open(shared, "r+b") as fh:  # damaged in place: same size, new mtime
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VerifyFailed, match="changed since it was written"):
        verify_version(stack.version_dir(second))
    with pytest.raises(VerifyFailed, match="checksum mismatch"):
        PartsVersion(stack.version_dir(second), second, read_manifest(stack.version_dir(second)), PartCache())
    # Damage that keeps the size and mtime (bit rot) passes the cheap check of a shared part, but not the
    # full hash an API process makes the first time it opens a part.
    with open(shared, "r+b") as fh:
        fh.seek(100)
        fh.write(byte)
    os.utime(shared, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    PartsVersion(stack.version_dir(second), second, read_manifest(stack.version_dir(second)), PartCache())
    with open(shared, "r+b") as fh:
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(shared, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    verify_version(stack.version_dir(second))  # the worker's check of a shared part: size and mtime only
    with pytest.raises(VerifyFailed, match="checksum mismatch"):
        PartsVersion(stack.version_dir(second), second, read_manifest(stack.version_dir(second)), PartCache())


def test_a_process_opens_a_shared_part_once(stack):
    """Loading the next version reuses the parts this process already opened (and hashed): a load costs
    what is new, and old and new version share the same mapped pages."""
    stack.ingest(_docs([f"d{i}" for i in range(30)]))
    first = stack.rebuild()["version"]
    stack.ingest(_docs(["d1"], "edited"))
    second = stack.rebuild()["version"]
    old = open_version(stack.version_dir(first), first)
    new = open_version(stack.version_dir(second), second)
    assert isinstance(old, PartsVersion) and isinstance(new, PartsVersion)
    assert new.parts[0] is old.parts[0] and PARTS.open(new.parts[0].directory, new.refs[0].sha256) is old.parts[0]


def test_a_data_dir_written_by_format_1_loads_and_the_next_rebuild_converts_it(tmp_path):
    """tests/fixtures/format1 was written by the release before parts (09dd68c): its version loads and
    answers exactly as that release answered; the next rebuild writes format 2 in full from its segments,
    and the new version answers the same queries alike (scores may move: the hashing embedder ties, and
    BM25 is computed per part now, not by bm25s)."""
    shutil.copytree(FIXTURE / "data", tmp_path / "data")
    stack = Stack(tmp_path / "data", "legacy")
    restore(stack.client, json.loads((FIXTURE / "redis.json").read_text()))
    pointer = stack.svc.pointers.get("legacy")
    expected = json.loads((FIXTURE / "answers.json").read_text())

    old = open_version(stack.svc.storage.resolve_relative(pointer["path"]), pointer["version"])
    assert isinstance(old, LoadedVersion)
    assert answers_of(old, stack.embed) == expected

    result = stack.rebuild()
    assert result["incremental"] is False and "format 1" in result["full_reason"]
    new = open_version(stack.version_dir(result["version"]), result["version"])
    assert isinstance(new, PartsVersion) and new.vectors == old.vectors == 22
    got = answers_of(new, stack.embed)
    assert got[-1] == expected[-1]  # the same documents and chunk texts
    for mine, theirs in zip(got[:-1], expected[:-1], strict=True):
        if mine["mode"] != "hybrid":  # hybrid fuses ranks, which the embedder's many ties reorder
            assert [h[:2] for h in mine["hits"][:1]] == [h[:2] for h in theirs["hits"][:1]], mine  # the best hit
        assert {h[0] for h in mine["hits"]} <= {d for d in expected[-1]["documents"]}
    # and the rebuild after that is incremental on the new format
    stack.ingest(_docs(["notes/n99.md"]))
    assert stack.rebuild()["incremental"] is True


def test_a_collection_emptied_and_filled_again_keeps_answering(stack):
    """Every document deleted: the next version has no part at all (a part with no live row is dropped);
    documents added after that are searchable again, incrementally."""
    from shared.jobs.deletion import run_delete
    from shared.jobs.submit import submit_delete

    stack.ingest(_docs(["a1", "a2", "a3"]))
    stack.rebuild()
    job = submit_delete(stack.svc, "docs", ["a1", "a2", "a3"])
    run_delete(stack.svc, job["id"])
    emptied = stack.rebuild(force=True)  # the shrink guard refuses an emptied collection unless forced
    assert emptied["vectors"] == 0 and emptied["documents"] == 0
    version = open_version(stack.version_dir(emptied["version"]), emptied["version"])
    assert version.manifest["parts"] == [] and version.nearest(stack.embed("gizmo a1"), 5) == []
    version.warm()
    stack.ingest(_docs(["b1"]))
    refilled = stack.rebuild()
    assert refilled["incremental"] is True and refilled["vectors"] == 1
    version = open_version(stack.version_dir(refilled["version"]), refilled["version"])
    assert [h["doc_id"] for h in search(version, "gizmo b1", 3, "hybrid", None, stack.embed).hits] == ["b1"]


def test_a_manifest_naming_a_bitmap_outside_the_version_is_refused(stack):
    stack.ingest(_docs([f"d{i}" for i in range(10)]))
    stack.rebuild()
    stack.ingest(_docs(["d1"], "edited"))
    second = stack.rebuild()["version"]
    path = stack.version_dir(second) / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["parts"][0]["deleted_file"] == f"deleted-{manifest['parts'][0]['name']}.npy"
    for forged in ("../../../etc/passwd", "/dev/zero", f"deleted-{manifest['parts'][1]['name']}.npy"):
        manifest["parts"][0]["deleted_file"] = forged
        path.write_text(json.dumps(manifest))
        with pytest.raises(VerifyFailed, match="unexpected bitmap|checksum mismatch"):
            verify_version(stack.version_dir(second))


def test_folding_keeps_parts_few_and_rewrites_each_row_a_few_times():
    from shared.jobs.build import MAX_PARTS, _fold_count

    assert _fold_count([1000], 10) == 0
    assert _fold_count([1000, 10], 10) == 1  # the tail part holds at most twice the new rows
    assert _fold_count([1000, 100], 10) == 0
    assert _fold_count([1000, 30, 10], 10) == 2
    geometric = [1_000_000] + [400_000 >> i for i in range(7)]  # MAX_PARTS parts already
    assert _fold_count(geometric, 100) == 1  # only as many as keep the count, not a cascade
    # 500 edits of 100 rows each onto a base of 100,000: the count stays bounded and the rows rewritten
    # by folds stay within a small multiple of the rows added (binary-counter merging: O(log n) each).
    parts, rewritten = [100_000], 0
    for _ in range(500):
        fold = _fold_count(parts, 100)
        rewritten += sum(parts[len(parts) - fold:])
        parts = parts[:len(parts) - fold] + [100 + sum(parts[len(parts) - fold:])]
        assert len(parts) <= MAX_PARTS and parts[0] == 100_000
    assert rewritten <= 10 * 500 * 100


def test_setting_nprobe_on_a_served_version_takes_effect(tmp_path):
    """Every list probed is the exact answer over the live rows (what the benchmark's recall compares
    against): nprobe set on a loaded version reaches every part's search, filtered or not."""
    import numpy as np

    from shared.index.parts import part_vectors

    stack = Stack(tmp_path / "data", approx_threshold=300)
    stack.svc.collections.create("docs")
    stack.ingest(_docs([f"d{i}" for i in range(500)]))
    stack.rebuild()
    stack.ingest(_docs([f"d{i}" for i in range(5)], "edited") + _docs(["n1", "n2"]))
    result = stack.rebuild()
    assert result["incremental"] is True and result["kind"] == "ivf-flat-ip"
    version = open_version(stack.version_dir(result["version"]), result["version"])
    assert isinstance(version, PartsVersion) and len(version.parts) == 2
    vectors = np.concatenate([part_vectors(part) for part in version.parts])
    live = np.concatenate([np.ones(r.rows, bool) if r.deleted is None else ~r.deleted for r in version.refs])
    version.nprobe = max(part.ivf.nlist for part in version.parts)
    for text in ("gizmo d3 widget", "Note n1 about", "widget3 and gizmo d250"):
        query = stack.embed(text)
        exact = np.sort(np.where(live, vectors @ query, -np.inf))[::-1][:10]
        found = version.nearest(query, 10)
        assert all(live[row] for row, _ in found)  # (the hashing embedder ties: scores are compared)
        assert np.allclose([score for _, score in found], exact, atol=1e-5)
