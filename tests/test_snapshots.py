"""Snapshots as domain code (fakeredis, the hashing embedder): the archive checker refuses whatever is
not a complete, intact archive of the layout, leaving nothing; snapshot then restore gives a
collection that answers like the original."""

from __future__ import annotations

import io
import json
import tarfile

import fakeredis
import numpy as np
import pytest

from shared.errors import JobInputError, RequestRefused
from shared.index.parts import open_version
from shared.jobs.archive import ArchiveRefused, check_and_extract, write_archive
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.snapshots import (
    list_snapshots,
    run_restore,
    run_snapshot,
    submit_restore_from,
    submit_restore_upload,
    submit_snapshot,
)
from shared.jobs.submit import submit_documents
from shared.jobstates import FAILED, SUCCEEDED
from shared.settings import Settings
from tests.support import make_services

DOCS = [{"id": f"d{i}", "text": f"# Title {i}\nSome words about topic {i} and more {i * 7}."} for i in range(12)]


def _archive(tmp_path, members: dict[str, bytes], inner_extra: dict | None = None) -> tuple:
    files = []
    for name, data in members.items():
        path = tmp_path / f"src-{len(files)}"
        path.write_bytes(data)
        files.append((name, path))
    archive = tmp_path / "a.tar"
    write_archive(archive, files, {"collection": "docs", "version": 3, **(inner_extra or {})})
    return archive, tmp_path / "out"


GOOD = {"indexes/v3/manifest.json": b'{"version": 3}', "segments/0000000001/meta.json": b"{}"}


def test_a_good_archive_extracts(tmp_path):
    archive, out = _archive(tmp_path, GOOD)
    out.mkdir()
    manifest = check_and_extract(archive, out, 1 << 20)
    assert manifest["version"] == 3 and set(manifest["members"]) == set(GOOD)
    assert (out / "segments" / "0000000001" / "meta.json").read_bytes() == b"{}"


def _tar_with(tmp_path, add) -> tuple:
    """A copy of a good archive whose members pass through `add(tar, info, data)`."""
    archive, out = _archive(tmp_path, GOOD)
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w", format=tarfile.PAX_FORMAT) as dst:
        for info in src:
            data = src.extractfile(info).read()
            add(dst, info, data)
    out.mkdir()
    return bad, out


def _refused(bad, out, words: str) -> None:
    with pytest.raises(ArchiveRefused, match=words):
        check_and_extract(bad, out, 1 << 20)


def test_an_oversized_extended_header_is_refused_before_it_is_read(tmp_path):
    def add(tar, info, data):
        info.pax_headers = {"comment": "x" * (200 * 1024)}  # tarfile would read all of it into memory
        tar.addfile(info, io.BytesIO(data))

    bad, out = _tar_with(tmp_path, add)
    _refused(bad, out, "extended header of")


def test_a_bad_checksum_is_refused(tmp_path):
    def add(tar, info, data):
        if info.name.endswith("meta.json"):
            data = b"[]"  # same size, other bytes
        tar.addfile(info, io.BytesIO(data))
    bad, out = _tar_with(tmp_path, add)
    _refused(bad, out, "checksum mismatch")


def test_a_truncated_archive_is_refused(tmp_path):
    archive, out = _archive(tmp_path, {**GOOD, "segments/0000000001/vectors.npy": b"x" * 50_000})
    out.mkdir()
    data = archive.read_bytes()
    # Cut in a member, in the inner manifest, in a header (the zero blocks at the end are padding only).
    for cut in (len(data) // 2, data.index(b'"members"') + 20, 700):
        truncated = tmp_path / f"cut-{cut}.tar"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ArchiveRefused):
            check_and_extract(truncated, out, 1 << 20)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "indexes/v3/../../x", "segments/0000000001/other.txt"])
def test_a_member_outside_the_layout_is_refused(tmp_path, name):
    def add(tar, info, data):
        tar.addfile(info, io.BytesIO(data))
        if info.name == "indexes/v3/manifest.json":
            extra = tarfile.TarInfo(name)
            extra.size = 1
            tar.addfile(extra, io.BytesIO(b"x"))
    bad, out = _tar_with(tmp_path, add)
    _refused(bad, out, "outside the snapshot layout")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.DIRTYPE])
def test_links_devices_and_folders_are_refused(tmp_path, kind):
    def add(tar, info, data):
        if info.name == "segments/0000000001/meta.json":
            link = tarfile.TarInfo(info.name)
            link.type, link.linkname = kind, "/etc/passwd"
            tar.addfile(link)
        else:
            tar.addfile(info, io.BytesIO(data))
    bad, out = _tar_with(tmp_path, add)
    _refused(bad, out, "not a regular file")


def test_an_unlisted_member_and_an_oversized_archive_are_refused(tmp_path):
    def add(tar, info, data):
        tar.addfile(info, io.BytesIO(data))
        if info.name == "indexes/v3/manifest.json":
            extra = tarfile.TarInfo("segments/0000000002/meta.json")
            extra.size = 2
            tar.addfile(extra, io.BytesIO(b"{}"))
    bad, out = _tar_with(tmp_path, add)
    _refused(bad, out, "does not list exactly")
    with pytest.raises(ArchiveRefused, match="SWAPLINE_MAX_SNAPSHOT_BYTES"):
        check_and_extract(bad, out, 100)


# snapshot and restore over the domain code

@pytest.fixture
def svc(tmp_path):
    enqueued: list[tuple[str, str]] = []
    client = fakeredis.FakeRedis(decode_responses=True)
    svc = make_services(Settings(embedder="hash", data_dir=tmp_path / "data", redis_url="redis://x"), client,
                        enqueued)
    svc.enqueued = enqueued  # type: ignore[attr-defined]
    yield svc
    client.close()


def _run(svc) -> None:
    runners = {"ingest": run_ingest, "rebuild": run_rebuild, "snapshot": run_snapshot, "restore": run_restore}
    while svc.enqueued:
        kind, job_id = svc.enqueued.pop(0)
        try:
            runners[kind](svc, job_id)
        except JobInputError as exc:  # what the task does with it (workers.tasks)
            svc.jobs.fail(job_id, str(exc))


def _hits(svc, name: str) -> list:
    pointer = svc.pointers.get(name)
    version = open_version(svc.storage.resolve_relative(pointer["path"]), pointer["version"])
    q = np.asarray(svc.embedder.embed(["words about topic 3"])[0], dtype=np.float32)
    return [(version.record(row)["chunk_id"], round(score, 6)) for row, score in version.nearest(q, 5)]


def test_snapshot_then_restore_answers_like_the_original(svc, tmp_path):
    svc.collections.create("docs")
    for start in (0, 6):  # two segments, two parts
        submit_documents(svc, "docs", DOCS[start:start + 6], rebuild=True)
        _run(svc)
    job = submit_snapshot(svc, "docs")
    _run(svc)
    done = svc.jobs.get(job["id"])
    assert done["state"] == SUCCEEDED, done
    assert [s["id"] for s in list_snapshots(svc, "docs")] == [done["result"]["id"]]
    assert done["result"]["segments"] == 2

    with pytest.raises(RequestRefused) as unknown:
        submit_restore_from(svc, "copy", "docs", "20260101T000000Z-00000000")
    assert unknown.value.status == 404
    with pytest.raises(RequestRefused) as taken:
        submit_restore_from(svc, "docs", "docs", done["result"]["id"])
    assert taken.value.status == 409

    restore = submit_restore_from(svc, "copy", "docs", done["result"]["id"])
    _run(svc)
    restored = svc.jobs.get(restore["id"])
    assert restored["state"] == SUCCEEDED, restored
    assert restored["result"]["documents"] == 12 and restored["result"]["embedded"] == 0
    assert _hits(svc, "copy") == _hits(svc, "docs")
    assert svc.collections.info("copy")["documents"] == 12
    assert svc.collections.segments("copy") == svc.collections.segments("docs")
    assert json.loads((svc.storage.version_dir("copy", svc.pointers.get("copy")["version"]) / "manifest.json")
                      .read_text())["collection"] == "copy"

    # A truncated upload: the job fails, no collection, nothing on disk.
    data = svc.storage.snapshot_path("docs", done["result"]["id"]).read_bytes()
    cut = data[:len(data) // 2]
    job = submit_restore_upload(svc, "broken", io.BytesIO(cut), len(cut))
    _run(svc)
    failed = svc.jobs.get(job["id"])
    assert failed["state"] == FAILED and "refused" in failed["error"], failed
    assert not svc.collections.exists("broken")
    assert not svc.storage.segments_dir("broken").exists() and not svc.storage.indexes_dir("broken").exists()
    assert not svc.storage.upload_path(job["id"]).exists()
    assert list(svc.storage.restoring_dir().iterdir()) == []


def test_an_upload_restore_hit_by_a_redis_outage_runs_again_and_succeeds(svc, monkeypatch):
    """Redis fails while the restore registers the collection: the task runs the job again (the
    upload is its input and stays; the folders moved in are undone), and the second run restores."""
    import redis

    svc.collections.create("docs")
    submit_documents(svc, "docs", DOCS[:6], rebuild=True)
    _run(svc)
    job = submit_snapshot(svc, "docs")
    _run(svc)
    data = svc.storage.snapshot_path("docs", svc.jobs.get(job["id"])["result"]["id"]).read_bytes()
    upload = submit_restore_upload(svc, "copy", io.BytesIO(data), len(data))
    svc.enqueued.clear()
    adopt = svc.collections.adopt

    def down(*_args, **_kwargs):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(svc.collections, "adopt", down)
    with pytest.raises(redis.ConnectionError):
        run_restore(svc, upload["id"])
    assert svc.storage.upload_path(upload["id"]).is_file()
    assert not svc.storage.segments_dir("copy").exists() and not svc.collections.exists("copy")
    monkeypatch.setattr(svc.collections, "adopt", adopt)
    run_restore(svc, upload["id"])  # the task's next attempt (the job is running: a resume)
    assert svc.jobs.get(upload["id"])["state"] == SUCCEEDED
    assert _hits(svc, "copy") == _hits(svc, "docs")
    assert not svc.storage.upload_path(upload["id"]).exists()
