"""Hostile data at rest: the data volume filling up while the embedding cache is on, and a published
index version whose length field was forged. Both run a real redis-server, API and Celery worker at the
default settings."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import psutil
import pytest

from shared import keys
from shared.index.parts import PART_FILE
from shared.index.vectorindex import MANIFEST_FILE
from tests.chaos.conftest import corpus, published, rebuild, stage_documents
from tests.chaos.test_api import part_file
from tests.chaos.test_redis_disk import fill, small_volume  # noqa: F401  (the 8 MiB tmpfs fixture)
from tests.support import create_collection, post_documents, wait_job

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


def test_disk_full_with_the_embedding_cache_on_ends_retryable(small_volume, cfg, procs, rdb):  # noqa: F811
    assert cfg.embed_cache_bytes > 0  # the default: the cache is on
    base = procs.api(cfg)
    worker = procs.worker(cfg)
    create_collection(base)
    stage_documents(base, 20, "alpha")  # the worker has opened its cache

    # 400 short documents: their batch (about 40 KB) fits in what is left, their vectors (600 KB in
    # the cache, as much again in the segment) do not.
    fill(small_volume, leave=128 * 1024)
    resp = post_documents(base, corpus(400, "beta"), rebuild=False)
    assert resp.status_code == 202, resp.text
    done = wait_job(base, resp.json()["id"], timeout=120)
    assert done["state"] == "failed" and done["retryable"] is True, done
    assert "no space left" in done["error"], done["error"]
    log = worker.log()
    assert "event=embed_cache.unavailable" in log
    assert log.count("event=embed_cache.unavailable") == 1
    assert "database or disk is full" not in done["error"]

    # With space again, the same documents go in.
    (small_volume / "filler").unlink()
    resp = post_documents(base, corpus(400, "beta"), rebuild=False)
    assert resp.status_code == 202, resp.text
    done = wait_job(base, resp.json()["id"], timeout=120)
    assert done["state"] == "succeeded", done


def _pool_processes(worker) -> list[psutil.Process]:
    parent = psutil.Process(worker.popen.pid) if hasattr(worker, "popen") else psutil.Process(worker.pid)
    return [parent, *parent.children(recursive=True)]


def _peak_rss(processes: list[psutil.Process]) -> int:
    """The largest peak resident size (VmHWM) among `processes`, in bytes."""
    peak = 0
    for proc in processes:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


class RssWatch:
    """Polls the current RSS of a worker's processes every 20 ms, keeping the largest seen."""

    def __init__(self, worker):
        self.worker, self.largest, self._stop = worker, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for proc in _pool_processes(self.worker):
                try:
                    self.largest = max(self.largest, proc.memory_info().rss)
                except psutil.Error:
                    pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.largest


FORGED_FLOATS = 1 << 28  # the codes vector claims 1 GiB


def _forge_length(version_dir: Path, fix_checksum: bool) -> int:
    """Set the length of the flat index's codes vector, in the version's part, to 1 GiB (the file keeps
    its real size); with `fix_checksum`, the part's part.json is made to match the forged file (its
    digest, size and mtime) and the manifest to match that part.json, so only the length lies."""
    import hashlib

    manifest_path = version_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    path = part_file(version_dir)
    part_json = path.parent / PART_FILE
    part = json.loads(part_json.read_text())
    data = bytearray(path.read_bytes())
    assert data[:4] == b"IxFI", data[:4]
    # IxFI, d (int32), ntotal (int64), two int64 dummies, is_trained (1 byte), metric (int32): then
    # the codes vector's length, counted in 4-byte units.
    offset = 4 + 4 + 8 + 8 + 8 + 1 + 4
    assert struct.unpack_from("<Q", data, offset)[0] == part["rows"] * part["dim"]
    struct.pack_into("<Q", data, offset, FORGED_FLOATS)
    path.write_bytes(bytes(data))
    if fix_checksum:
        stat = path.stat()
        part["files"][path.name] = {"sha256": hashlib.sha256(bytes(data)).hexdigest(), "bytes": stat.st_size,
                                    "mtime_ns": stat.st_mtime_ns}
        part_json.write_text(json.dumps(part, indent=1))
        entry = manifest["parts"][-1]
        entry["part_sha256"] = hashlib.sha256(part_json.read_bytes()).hexdigest()
        # The version's identity over its parts, as shared.index.parts.write_version_manifest computes it.
        manifest["checksum"] = hashlib.sha256(json.dumps([manifest["parts"], manifest["files"]],
                                                         sort_keys=True).encode()).hexdigest()
        manifest_path.write_text(json.dumps(manifest, indent=1))
    return len(data)


@pytest.mark.parametrize("fix_checksum", [False, True], ids=["checksum-stale", "checksum-fixed-up"])
def test_forged_index_length_is_refused_before_any_allocation(fix_checksum, cfg, procs, rdb):
    base = procs.api(cfg)
    worker = procs.worker(cfg)
    create_collection(base)
    stage_documents(base, 300, "alpha")
    v1 = published(base)
    pointer = rdb.hgetall(keys.pointer("docs"))
    version_dir = Path(cfg.data_dir) / pointer["path"]
    if not version_dir.is_dir():
        version_dir = Path(cfg.data_dir) / "indexes" / "docs" / f"v{v1}"
    size = _forge_length(version_dir, fix_checksum)
    stage_documents(base, 50, "beta")

    baseline = _peak_rss(_pool_processes(worker))
    watch = RssWatch(worker)
    done = wait_job(base, rebuild(base), timeout=180)
    polled = watch.stop()
    peak = _peak_rss(_pool_processes(worker))
    print(f"fix_checksum={fix_checksum} file={size} B baseline_peak={baseline >> 20} MiB "
          f"peak_after={peak >> 20} MiB polled_max={polled >> 20} MiB")

    assert done["state"] == "succeeded", done
    result = done["result"]
    assert result["incremental"] is False, result
    assert "could not be read" in result["full_reason"], result
    limit = baseline + size + 200 * (1 << 20)
    assert peak < limit, f"worker peak RSS {peak >> 20} MiB (baseline {baseline >> 20} MiB)"
    assert polled < limit
