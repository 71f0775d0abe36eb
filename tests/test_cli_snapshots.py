"""`swapline snapshot ...` and `swapline recover`: the console script as a subprocess against real API and
worker processes (as in tests/test_cli.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support import create_collection, ingest_and_rebuild, search, wait_for
from tests.test_cli import swapline

DOCS = [{"id": f"d{i}", "text": f"# Doc {i}\nPods and volumes, note {i}."} for i in range(4)]


def test_restore_needs_one_source_and_ids_are_checked():
    usage = swapline("http://127.0.0.1:9", "snapshot", "restore", "new")
    assert usage.returncode == 2 and "--from COLLECTION --id ID" in usage.stderr
    bad = swapline("http://127.0.0.1:9", "snapshot", "download", "docs", "../../etc")
    assert bad.returncode == 1 and "not a snapshot id" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.integration
def test_snapshot_create_list_download_restore_and_recover(settings, procs, tmp_path, rclient):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base, "docs")
    _, rebuild = ingest_and_rebuild(base, DOCS, "docs")
    version = rebuild["result"]["version"]

    created = swapline(base, "snapshot", "create", "docs", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    snap = json.loads(created.stdout)["result"]
    assert snap["version"] == version

    listed = swapline(base, "snapshot", "list", "docs")
    assert listed.returncode == 0 and snap["id"] in listed.stdout and f"version {version}" in listed.stdout

    out = tmp_path / "docs.tar"
    got = swapline(base, "snapshot", "download", "docs", snap["id"], "-o", str(out), "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() == snap["sha256"]

    kept = swapline(base, "snapshot", "restore", "fromkept", "--from", "docs", "--id", snap["id"], "--wait")
    assert kept.returncode == 0 and "restored fromkept" in kept.stdout, kept.stderr
    uploaded = swapline(base, "snapshot", "restore", "fromfile", "--file", str(out), "--wait")
    assert uploaded.returncode == 0 and "restored fromfile" in uploaded.stdout, uploaded.stderr
    for name in ("fromkept", "fromfile"):
        wait_for(lambda n=name: search(base, "pods", n).json()["index_version"] == version, message=name)
        assert search(base, "pods", name).json()["hits"] == search(base, "pods", "docs").json()["hits"]

    broken = tmp_path / "broken.tar"
    broken.write_bytes(out.read_bytes()[:1000])
    failed = swapline(base, "snapshot", "restore", "broken", "--file", str(broken), "--wait")
    assert failed.returncode == 1 and "refused" in failed.stderr and "Traceback" not in failed.stderr

    missing = swapline(base, "snapshot", "restore", "x", "--from", "docs", "--id", "20200101T000000Z-00000000")
    assert missing.returncode == 1 and "404" in missing.stderr

    rclient.flushall()
    recovered = swapline(base, "recover", "--wait")
    assert recovered.returncode == 0, recovered.stderr
    assert "recovered 3 collections" in recovered.stdout and "0 embedded" in recovered.stdout
