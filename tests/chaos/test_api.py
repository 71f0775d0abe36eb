"""Chaos at the API: a damaged version at the pointer, swaps under search load, a hundred idle event
streams at the default heartbeat, a cross-site form post with the admin's Basic credentials, and input
that is not JSON a server can round-trip."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from shared import keys
from shared.index.parts import part_name, parts_dir
from shared.index.vectorindex import INDEX_FILE, MANIFEST_FILE
from tests.chaos.conftest import SearchLoad, published, publishes, rebuild, serving, stage_documents
from tests.support import create_collection, make_services, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


def flip_byte(path, offset_from_end: int = 20) -> None:
    """Damage a file in place (no truncation: processes that map it keep a valid mapping)."""
    with open(path, "r+b") as fh:
        fh.seek(-offset_from_end, 2)
        byte = fh.read(1)
        fh.seek(-offset_from_end, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))


def part_file(version_dir: Path, name: str = INDEX_FILE) -> Path:
    """A file of the newest part a format-2 version references (where its vectors are)."""
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    return parts_dir(version_dir) / manifest["parts"][-1]["name"] / name


def publish_damaged_copy(cfg, of_version: int) -> int:
    """Publish, through the fenced publish with a lease of its own, a copy of a version with one byte
    of its vectors flipped (as a bad disk or a bad copy would leave it). Returns the new version. The
    copy's newest part is copied too, under the new fence's name, and damaged there: the original part
    is shared with `of_version`, which must stay good."""
    svc = make_services(cfg)
    try:
        lease = svc.locks.acquire("docs", "c" * 32)
        source = svc.storage.version_dir("docs", of_version)
        target = svc.storage.version_dir("docs", lease.fence)
        shutil.copytree(source, target)
        manifest = json.loads((target / MANIFEST_FILE).read_text())
        copied = svc.storage.part_dir("docs", part_name(lease.fence))
        shutil.copytree(part_file(source).parent, copied)
        manifest["parts"][-1]["name"] = copied.name
        (target / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": lease.fence}))
        flip_byte(part_file(target))
        pointer = {k: v for k, v in svc.pointers.get("docs").items()
                   if k not in ("fence", "published_at", "collection")}
        svc.pointers.publish(lease, {**pointer, "version": lease.fence, "path": svc.storage.relative(target)})
        svc.locks.release(lease)
        return lease.fence
    finally:
        svc.close()


def test_6_corrupt_version_at_the_pointer(cfg, procs, rdb):
    api1, base1 = procs.api_proc(cfg, name="api1")
    worker = procs.worker(cfg)
    create_collection(base1)
    stage_documents(base1, 50)
    v1 = published(base1)
    wait_for(lambda: serving(base1) == v1, message="api1 to serve v1")
    # The job says succeeded a moment before its task lets go of the collection's lease: a worker stopped
    # in between would leave the lease held until it expires (60 s), and the damaged copy could not be
    # published under a lease of its own.
    svc = make_services(cfg)
    try:
        wait_for(lambda: svc.locks.holder("docs") is None, message="the rebuild to release its lease")
    finally:
        svc.close()
    worker.stop()
    bad = publish_damaged_copy(cfg, v1)
    first_seen = time.monotonic()

    # The running process keeps v1 and reports the version it cannot load.
    def reported():
        failures = requests.get(f"{base1}/v1/collections/docs", timeout=10).json()["load_failures"]
        return [f for f in failures if f["version"] == bad]
    failure = wait_for(reported, timeout=30, message="the load failure in the collection status")[0]
    assert "checksum" in failure["error"]
    assert serving(base1) == v1
    assert requests.get(f"{base1}/readyz", timeout=10).status_code == 200
    events = [json.loads(f["data"]) for _, f in rdb.xrange(keys.events()) if f["type"] == "index.load_failed"]
    assert [e["version"] for e in events] == [bad] and events[0]["serving"] == v1
    metrics = requests.get(f"{base1}/metrics", timeout=10).text
    assert f'swapline_index_load_failing{{collection="docs",replica="{failure["replica"]}",version="{bad}"}}' in metrics

    # A process started now serves the newest version that loads, from the pointer history.
    base2 = procs.api(cfg, name="api2")
    assert serving(base2) == v1

    # Retried with growing pauses, not on every 2 s poll: by the 4th attempt ~14 s have passed, in
    # which polling would have logged 7 failures or more.
    def attempts():
        failed = requests.get(f"{base1}/readyz", timeout=10).json()["checks"]["load_failures"]
        return failed.get("docs", {}).get("attempts", 0) >= 4
    wait_for(attempts, timeout=60, message="the 4th load attempt")
    elapsed = time.monotonic() - first_seen
    logged = api1.log().count("event=watcher.load_failed")
    assert logged <= 4 and logged < elapsed / cfg.watcher_poll_seconds, (logged, elapsed)

    # When no version at all can be loaded, a new process says it is not ready (and serves nothing).
    flip_byte(part_file(cfg.data_dir / "indexes" / "docs" / f"v{v1}"))
    base3 = procs.api(cfg, name="api3", ready=False)
    ready = wait_for(lambda: (r := requests.get(f"{base3}/readyz", timeout=10)).status_code == 503
                     and r.json()["checks"]["index_watcher"] and r.json(), timeout=60, message="api3 not ready")
    assert ready["checks"]["unservable"] == ["docs"]
    assert serving(base3) is None
    assert publishes(rdb) == [v1, bad]


def test_10_swaps_under_search_load_fail_no_search(cfg, procs):
    base = procs.api(cfg)
    procs.worker(cfg)
    create_collection(base)
    stage_documents(base, 200, "v0")
    versions = [published(base)]
    wait_for(lambda: serving(base) == versions[-1])
    load = SearchLoad(base, threads=4)
    for i in range(3):
        stage_documents(base, 40, f"v{i + 1}")
        versions.append(published(base))
        wait_for(lambda v=versions[-1]: serving(base) == v, message=f"the API to serve v{versions[-1]}")
    load.stop()
    assert not load.errors, load.errors[:3]
    assert len(load.answers) > 100
    assert all(status == 200 for status, _, _ in load.answers), {s for s, _, _ in load.answers}
    assert len({version for _, version, _ in load.answers} & set(versions)) >= 3  # swapped while searched


def search_p99(base: str, rounds: int = 3, per_round: int = 150) -> list[float]:
    """Each round's p99 latency of distinct (uncached) searches, in seconds."""
    session = requests.Session()
    p99s = []
    for r in range(rounds):
        times = []
        for i in range(per_round):
            started = time.perf_counter()
            resp = session.post(f"{base}/v1/collections/docs/search", json={"query": f"item{i} round {r} {time.time()}",
                                                                          "k": 5}, timeout=30)
            times.append(time.perf_counter() - started)
            assert resp.status_code == 200
        p99s.append(statistics.quantiles(times, n=100)[98])
    return p99s


def api_cpu_seconds(proc) -> float:
    """CPU time (user + system) the API process and its gunicorn workers have used so far."""
    root = psutil.Process(proc.popen.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def test_11_hundred_idle_event_streams_at_the_default_heartbeat(cfg, procs):
    """100 idle event streams at the default heartbeat stay open past it, each gets its keepalive, and
    they cost the API next to nothing while idle: no busy polling. (Search latency with streams open is
    printed for the record; timing belongs to `make bench`, not to a pass/fail test on a shared machine.)"""
    assert cfg.sse_heartbeat_seconds == 15.0 and cfg.sse_max_streams >= 100  # the defaults under test
    api, base = procs.api_proc(cfg)
    procs.worker(cfg)
    create_collection(base)
    stage_documents(base, 200)
    version = published(base)
    wait_for(lambda: serving(base) == version)
    alone = search_p99(base)

    opened_at = time.monotonic()
    stop = threading.Event()
    seen: dict[int, list] = {i: [] for i in range(100)}
    broken: dict[int, str] = {}
    responses: list[requests.Response] = []

    def follow(i: int) -> None:
        try:
            with requests.get(f"{base}/v1/events", stream=True, timeout=60) as resp:
                responses.append(resp)
                seen[i].append(resp.status_code)
                for line in resp.iter_lines(decode_unicode=True):
                    if line == ": keepalive":
                        seen[i].append(time.monotonic())
                    if stop.is_set():
                        return
                broken[i] = "ended"
        except Exception as exc:  # a broken chunk, a timeout: recorded, and the test fails on it
            if not stop.is_set():
                broken[i] = repr(exc)

    readers = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(100)]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(seen[i] for i in seen), timeout=30, message="100 streams to open")
    assert all(seen[i][0] == 200 for i in seen), {seen[i][0] for i in seen}
    with_streams = search_p99(base)  # every search answers 200 with the streams open
    # Idle with 100 streams open, across the heartbeat: the API's CPU use over that window.
    cpu_before, idle_from = api_cpu_seconds(api), time.monotonic()
    wait_for(lambda: all(len(seen[i]) >= 2 for i in seen) or broken, timeout=40,
             message="a keepalive on every stream")
    wait_for(lambda: time.monotonic() - opened_at > cfg.sse_heartbeat_seconds + 5, timeout=30)
    idle_share = (api_cpu_seconds(api) - cpu_before) / (time.monotonic() - idle_from)
    assert not broken, dict(list(broken.items())[:3])
    stop.set()
    for resp in responses:
        resp.close()
    alone += search_p99(base)
    print(f"search p99: {statistics.median(alone) * 1000:.2f} ms alone, "
          f"{statistics.median(with_streams) * 1000:.2f} ms with 100 idle event streams; "
          f"API CPU while the streams idled: {idle_share:.1%} of one core")
    assert idle_share < 0.10, f"100 idle event streams kept the API at {idle_share:.0%} of a core"


def test_12_cross_site_form_post_with_admin_basic_credentials_is_refused(cfg, procs):
    keyed = cfg.with_(api_keys=(("k-admin-0123456789abcdefghij", "admin"),))
    base = procs.api(keyed)
    bearer = {"Authorization": "Bearer k-admin-0123456789abcdefghij"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"operator:k-admin-0123456789abcdefghij").decode()}
    create_collection(base, headers=bearer)
    queued = requests.post(f"{base}/v1/collections/docs/rebuild", headers=bearer, timeout=10).json()
    # What a browser sends for a form on another site once the operator logged into /admin.
    form = {**basic, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site",
            "Content-Type": "application/x-www-form-urlencoded"}
    for path in ("/v1/collections/docs/rebuild", f"/v1/jobs/{queued['id']}/cancel", "/v1/collections/docs/rollback",
                 "/v1/collections", "/admin/collections/docs/rebuild", "/admin/collections/docs/rollback"):
        resp = requests.post(f"{base}{path}", data="version=1&name=x", headers=form, timeout=10)
        assert resp.status_code in (401, 403), (path, resp.status_code, resp.text)
        assert resp.headers["Content-Type"].startswith("application/problem+json")
    jobs = requests.get(f"{base}/v1/jobs", headers=bearer, timeout=10).json()["jobs"]
    assert [j["id"] for j in jobs] == [queued["id"]] and jobs[0]["state"] == "queued"

    # The admin page itself still works with Basic: the page, its event stream, and its own POSTs,
    # which carry the page's token and its session cookie (a browser keeps it) from the same origin.
    browser = requests.Session()
    page = browser.get(f"{base}/admin", headers=basic, timeout=10)
    assert page.status_code == 200
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text).group(1)
    with requests.get(f"{base}/v1/events", headers=basic, stream=True, timeout=10) as stream:
        assert stream.status_code == 200
    own = {**basic, "X-CSRF-Token": token, "Origin": base}
    cancel = requests.post(f"{base}/v1/jobs/{queued['id']}/cancel", headers=bearer, timeout=10)
    assert cancel.status_code == 202
    assert browser.post(f"{base}/admin/collections/docs/rebuild", headers=own, timeout=10).status_code == 202
    # The token is bound to the origin and to the page's session: the same token sent from another
    # site, or without the session's cookie, is refused.
    other = {**own, "Origin": "https://evil.example"}
    assert browser.post(f"{base}/admin/collections/docs/rebuild", headers=other, timeout=10).status_code == 403
    assert requests.post(f"{base}/admin/collections/docs/rebuild", headers=own, timeout=10).status_code == 403


def raw_http(base: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are; returns (status, headers, body) of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_13_bad_input_always_gets_a_json_4xx(cfg, procs):
    base = procs.api(cfg)
    create_collection(base)
    docs = f"{base}/v1/collections/docs/documents"
    find = f"{base}/v1/collections/docs/search"
    deep = '{"documents": ' + "[" * 5000 + "]" * 5000 + "}"
    bodies = [
        (docs, '{"documents": [{"id": "\\ud800", "text": "x"}]}', 422),
        (docs, '{"documents": [{"id": "a", "text": "before \\udc00 after"}]}', 422),
        (docs, '{"documents": [{"id": "a", "text": "x", "metadata": {"\\ud83d": 1}}]}', 422),
        (docs, '{"documents": [{"id": "a", "text": "x", "metadata": {"score": NaN}}]}', 422),
        (docs, '{"documents": [{"id": "a", "text": "x", "metadata": {"score": -Infinity}}]}', 422),
        (docs, '{"documents": [{"id": "a", "text": "x", "metadata": {"score": 1e999}}]}', 422),
        (docs, deep, 400),
        (docs, '{"documents": [{"id": "a", "text": "x", "metadata": {"n": ' + "9" * 5000 + "}}]}", 400),
        (find, '{"query": "q", "k": 1.5}', 422),
        (find, '{"query": "q", "k": "3"}', 422),
        (find, '{"query": "q", "k": NaN}', 422),
        (find, '{"query": "\\ud800 q", "k": 3}', 422),
        (f"{base}/v1/collections/docs/rollback", '{"version": 1.5}', 422),
    ]
    for url, body, status in bodies:
        resp = requests.post(url, data=body.encode(), headers={"Content-Type": "application/json"}, timeout=30)
        assert resp.status_code == status, (body[:80], resp.status_code, resp.text[:200])
        assert resp.headers["Content-Type"].startswith("application/problem+json"), resp.headers
        assert {"code", "message"} <= set(resp.json())
    # What gunicorn answers itself, before the app: over-long request line and headers, too many
    # headers, a request line that is not HTTP.
    for request, status in [
        (f"GET /v1/jobs?x={'a' * 10_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414),
        (f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n".encode(), 431),
        (("GET /v1/jobs HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-H{i}: a\r\n" for i in range(150)) + "\r\n").encode(),
         431),
        (b"NOT-HTTP\r\n\r\n", 400),
    ]:
        got, headers, body = raw_http(base, request)
        assert got == status, (request[:60], got, body[:200])
        assert headers["content-type"] == "application/problem+json"
        assert {"code", "message"} <= set(json.loads(body))
    # Nothing was created by any of it.
    assert requests.get(f"{base}/v1/jobs", timeout=10).json()["jobs"] == []
    assert requests.get(f"{base}/v1/collections/docs", timeout=10).json()["documents"] == 0
    # And the API still answers well-formed requests.
    assert requests.post(find, json={"query": "fine", "k": 3}, timeout=10).status_code == 200
    assert rebuild(base)  # a well-formed job request is still accepted (202)
