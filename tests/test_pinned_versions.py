"""Reads pinned to a version: `version` on search and document reads, the Swapline-Version header,
document listing cursors that stay on the version they started on, and the reader lease a pinned
version holds.

The integration tests share one stack (the session's redis-server, one `celery worker`, the API under
gunicorn, the hashing embedder); the unit tests drive `PinnedVersions` on fakeredis with versions built
by the real domain code."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import fakeredis
import pytest
import requests

from shared import cursors
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import request_rebuild, submit_documents
from shared.jobs.versions import collect_versions
from shared.jobstates import SUCCEEDED
from shared.settings import Settings, SettingsError
from tests.support import (
    BIN,
    create_collection,
    ingest_and_rebuild,
    make_services,
    post_documents,
    search,
    wait_for,
    wait_job,
)
from webapp.api import pinned as pinned_module
from webapp.api.pinned import PinnedVersions, VersionLoading, VersionNotKept
from webapp.client import ApiError, Client

HEADER = "Swapline-Version"


# Integration: one stack for the module.

@pytest.fixture(scope="module")
def stack(module_settings, module_procs):
    settings = module_settings.with_(versions_keep=3)
    base = module_procs.api(settings)
    module_procs.worker(settings)
    return base, settings


def publish(base: str, name: str, docs: list[dict]) -> int:
    """Ingest and rebuild; returns the version once the API serves it."""
    _, rebuild = ingest_and_rebuild(base, docs, name)
    return served_after(base, name, rebuild)


def served_after(base: str, name: str, rebuild: dict) -> int:
    version = rebuild["result"]["version"]
    wait_for(lambda: requests.get(f"{base}/v1/collections/{name}/documents", params={"limit": 1},
                                  timeout=10).json()["index_version"] == version,
             timeout=30, message=f"v{version} of {name} to be served")
    return version


def doc_url(base: str, name: str, doc_id: str = "") -> str:
    return f"{base}/v1/collections/{name}/documents" + (f"/{doc_id}" if doc_id else "")


@pytest.mark.integration
def test_search_and_document_reads_pinned_to_an_older_kept_version(stack):
    base, settings = stack
    create_collection(base, "pins")
    v1 = publish(base, "pins", [{"id": "a.md", "text": "# Apples\nThe orchard grows crisp apples."}])
    v2 = publish(base, "pins", [{"id": "a.md", "text": "# Pears\nThe orchard now grows ripe pears."},
                                {"id": "b.md", "text": "# Plums\nA plum tree stands by the gate."}])
    assert v2 > v1

    def ask(query: str, **body) -> requests.Response:
        resp = search(base, query, "pins", k=5, mode="keyword", **body)
        assert resp.status_code == 200, resp.text
        return resp

    # The served version first, so its cache holds the answer a pinned read must not be given.
    now = ask("orchard apples")
    assert now.json()["index_version"] == v2 and now.headers[HEADER] == str(v2)
    assert [h["doc_id"] for h in now.json()["hits"]] == ["a.md"] and "pears" in now.json()["hits"][0]["text"]
    old = ask("orchard apples", version=v1)
    assert old.json()["index_version"] == v1 and old.headers[HEADER] == old.headers["X-Index-Version"] == str(v1)
    assert old.headers["X-Cache"] == "miss"
    assert [(h["doc_id"], "crisp apples" in h["text"]) for h in old.json()["hits"]] == [("a.md", True)]
    assert ask("orchard apples", version=v1).headers["X-Cache"] == "hit"  # its own cache
    again = ask("orchard apples")
    assert again.headers["X-Cache"] == "hit" and again.json() == now.json()
    assert ask("plum gate", version=v1).json()["hits"] == []  # b.md came with v2
    assert [h["doc_id"] for h in ask("plum gate", version=v2).json()["hits"]] == ["b.md"]

    # Document reads: one document, the listing.
    read = requests.get(doc_url(base, "pins", "a.md"), params={"version": v1}, timeout=10)
    assert read.status_code == 200 and read.headers[HEADER] == str(v1) and read.json()["index_version"] == v1
    assert "crisp apples" in read.json()["chunk_records"][0]["text"]
    current = requests.get(doc_url(base, "pins", "a.md"), timeout=10)
    assert current.headers[HEADER] == str(v2) and "ripe pears" in current.json()["chunk_records"][0]["text"]
    absent = requests.get(doc_url(base, "pins", "b.md"), params={"version": v1}, timeout=10)
    assert absent.status_code == 404 and absent.json()["code"] == "document_not_found"
    listed = requests.get(doc_url(base, "pins"), params={"version": v1}, timeout=10)
    assert listed.headers[HEADER] == str(v1)
    assert [d["id"] for d in listed.json()["documents"]] == ["a.md"] and listed.json()["index_version"] == v1

    # The Python client and the command line ask the same way.
    with Client(base) as client:
        assert client.search("pins", "orchard apples", mode="keyword", version=v1)["index_version"] == v1
        assert "crisp" in client.document("pins", "a.md", version=v1)["chunk_records"][0]["text"]
        assert client.documents("pins", version=v1)["index_version"] == v1
        with pytest.raises(ApiError) as not_kept:
            client.search("pins", "apples", version=v2 + 100)
        assert not_kept.value.status == 404
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")} | {"SWAPLINE_URL": base}
    cli = subprocess.run([str(BIN / "swapline"), "search", "pins", "orchard apples", "--mode", "keyword",
                          "--version", str(v1), "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["index_version"] == v1

    # The pinned version holds a reader lease of this API process.
    svc = make_services(settings)
    try:
        assert v1 in svc.replicas.leased("pins")
        kept = [v["version"] for v in requests.get(f"{base}/v1/collections/pins/versions", timeout=10).json()[
            "versions"]]
    finally:
        svc.close()
    assert kept == [v2, v1]

    # A version that is not kept: 404 listing the kept ones, on every read.
    for resp in (search(base, "apples", "pins", version=v2 + 100),
                 requests.get(doc_url(base, "pins", "a.md"), params={"version": v2 + 100}, timeout=10),
                 requests.get(doc_url(base, "pins"), params={"version": v2 + 100}, timeout=10)):
        assert resp.status_code == 404, resp.text
        problem = resp.json()
        assert problem["code"] == "version_not_kept" and problem["kept_versions"] == kept
        assert f"version {v2 + 100}" in problem["detail"]
    # Not a version at all: 422.
    for bad in (0, "2", -1, 2**60):
        assert search(base, "apples", "pins", version=bad).status_code == 422
    assert requests.get(doc_url(base, "pins"), params={"version": "x"}, timeout=10).status_code == 422


@pytest.mark.integration
def test_paging_documents_across_a_swap_neither_skips_nor_repeats(stack):
    base, _ = stack
    create_collection(base, "paged")
    first_ids = [f"d{i:02d}.md" for i in range(10)]
    v1 = publish(base, "paged", [{"id": i, "text": f"# {i}\nNote {i}."} for i in first_ids])
    page = requests.get(doc_url(base, "paged"), params={"limit": 2}, timeout=10).json()
    assert page["index_version"] == v1 and [d["id"] for d in page["documents"]] == first_ids[:2]
    seen, cursor = [d["id"] for d in page["documents"]], page["next_cursor"]

    # A swap between pages: documents added before and after where the listing is, one deleted.
    added = post_documents(base, [{"id": "d05a.md", "text": "# new\nAdded."}, {"id": "d99.md", "text": "# z\nZ."},
                                  {"id": "d00a.md", "text": "# early\nBefore the cursor."}], "paged", rebuild=False)
    assert wait_job(base, added.json()["id"])["state"] == SUCCEEDED
    deleted = requests.delete(doc_url(base, "paged", "d07.md"), timeout=10)
    assert deleted.status_code == 202, deleted.text
    delete_job = wait_job(base, deleted.json()["id"])
    v2 = served_after(base, "paged", wait_job(base, delete_job["result"]["rebuild_job_id"]))
    assert v2 > v1

    while cursor:
        resp = requests.get(doc_url(base, "paged"), params={"limit": 2, "cursor": cursor}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["index_version"] == v1 and resp.headers[HEADER] == str(v1)
        seen += [d["id"] for d in resp.json()["documents"]]
        cursor = resp.json()["next_cursor"]
    assert seen == first_ids  # in order: nothing skipped, nothing repeated, nothing from v2

    fresh = requests.get(doc_url(base, "paged"), params={"limit": 100}, timeout=10).json()
    assert fresh["index_version"] == v2
    assert [d["id"] for d in fresh["documents"]] == sorted(
        {*first_ids, "d05a.md", "d99.md", "d00a.md"} - {"d07.md"})

    # A cursor of a version that is not kept (here: never was) is gone; one that names another version
    # than `version` is refused.
    gone = requests.get(doc_url(base, "paged"), params={"cursor": cursors.encode(v2 + 100, "d01.md")}, timeout=10)
    assert gone.status_code == 410 and gone.json()["code"] == "cursor_version_gone"
    assert gone.json()["kept_versions"] == [v2, v1]
    mixed = requests.get(doc_url(base, "paged"), params={"cursor": cursors.encode(v1, "d01.md"), "version": v2},
                         timeout=10)
    assert mixed.status_code == 422 and "version" in mixed.json()["errors"]
    # A cursor from before versions were in cursors (the id alone) continues on the served version.
    legacy = requests.get(doc_url(base, "paged"), params={"cursor": cursors.encode("d05.md"), "limit": 2},
                          timeout=10).json()
    assert legacy["index_version"] == v2 and [d["id"] for d in legacy["documents"]] == ["d05a.md", "d06.md"]


# Unit: PinnedVersions on fakeredis.

class Versions:
    """A collection on fakeredis whose versions are built by the real ingest and rebuild."""

    def __init__(self, tmp_path, **overrides):
        self.settings = Settings(embedder="hash", data_dir=tmp_path / "data", redis_url="redis://unused/0",
                                 **overrides)
        self.svc = make_services(self.settings, fakeredis.FakeRedis(decode_responses=True))
        self.svc.collections.create("docs")

    def publish(self, text: str) -> int:
        job = submit_documents(self.svc, "docs", [{"id": "a.md", "text": text}], rebuild=False)
        run_ingest(self.svc, job["id"])
        rebuild, _ = request_rebuild(self.svc, "docs", exclusive=False)
        run_rebuild(self.svc, rebuild["id"])  # collects the versions past versions_keep, as in production
        done = self.svc.jobs.get(rebuild["id"])
        assert done["state"] == SUCCEEDED, done
        return done["result"]["version"]

    def on_disk(self, version: int) -> bool:
        return self.svc.storage.version_dir("docs", version).is_dir()


def test_a_pinned_version_holds_a_lease_so_collection_keeps_it(tmp_path):
    stack = Versions(tmp_path, versions_keep=2)
    v1, v2 = stack.publish("# One\nfirst"), stack.publish("# Two\nsecond")
    pins = PinnedVersions(stack.svc, "api-1", size=1, cache_size=8)
    opened = pins.get("docs", v1)
    assert opened.version.version == v1 and pins.get("docs", v1) is opened
    assert pins.held() == [("docs", v1)] and stack.svc.replicas.leased("docs") == {v1}

    v3 = stack.publish("# Three\nthird")  # v1 falls out of the kept versions; its rebuild collected
    assert [e["version"] for e in stack.svc.pointers.history("docs")] == [v3, v2]
    assert stack.on_disk(v1), "collection deleted a version a reader holds a lease on"
    assert opened.version.documents.get("a.md") is not None  # still readable

    with pytest.raises(VersionNotKept) as refused:  # no longer kept: refused, closed, its lease released
        pins.get("docs", v1)
    assert refused.value.kept == [v3, v2] and pins.held() == []
    assert stack.svc.replicas.leased("docs") == set()
    assert collect_versions(stack.svc, "docs") == [v1]

    # Past the bound, the least recently used is closed and its lease released.
    pins.get("docs", v2)
    assert stack.svc.replicas.leased("docs") == {v2}
    stack.svc.replicas.heartbeat("api-1", {}, pinned=pins.held())  # the watcher's heartbeat renews it
    assert stack.svc.replicas.leased("docs") == {v2}
    pins.close_all()
    assert stack.svc.replicas.leased("docs") == set() and pins.held() == []


def test_one_load_per_version_and_a_slow_one_answers_loading(tmp_path, monkeypatch):
    stack = Versions(tmp_path)
    v1 = stack.publish("# One\nfirst")
    v2 = stack.publish("# Two\nsecond")
    real_open, calls, release = pinned_module.open_version, [], threading.Event()

    def slow_open(directory, version):
        calls.append(version)
        release.wait(10)
        return real_open(directory, version)

    monkeypatch.setattr(pinned_module, "open_version", slow_open)
    pins = PinnedVersions(stack.svc, "api-1", size=2, cache_size=8, load_wait=0.2)
    outcomes: list[object] = []

    def read() -> None:
        try:
            outcomes.append(pins.get("docs", v1))
        except VersionLoading as busy:
            outcomes.append(busy)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(5)
    assert len(outcomes) == 4 and all(isinstance(o, VersionLoading) and o.retry_after > 0 for o in outcomes)
    with pytest.raises(VersionLoading):  # another version while one opens: refused, not a second load
        pins.get("docs", v2)
    release.set()
    wait_for(lambda: pins.held() == [("docs", v1)], timeout=10, message="the load to finish")
    assert pins.get("docs", v1).version.version == v1 and calls == [v1]  # one load served them all
    # The watcher dropping its own lease on v1 (a swap away from it) leaves the pinned reader's.
    stack.svc.replicas.release("api-1", "docs", v1)
    assert v1 in stack.svc.replicas.leased("docs")


def test_a_version_that_fails_to_load_is_refused_then_tried_again_after_a_pause(tmp_path, monkeypatch):
    stack = Versions(tmp_path)
    v1 = stack.publish("# One\nfirst")
    stack.publish("# Two\nsecond")
    (stack.svc.storage.version_dir("docs", v1) / "manifest.json").write_text("{not json")
    pins = PinnedVersions(stack.svc, "api-1", size=2, cache_size=8, failure_pause=0.3)
    with pytest.raises(VersionNotKept, match="cannot be loaded"):
        pins.get("docs", v1)
    assert stack.svc.replicas.leased("docs") == set()  # the lease taken for the load is released
    calls: list[int] = []

    def still_damaged(directory, version):
        calls.append(version)
        raise OSError("still damaged")

    monkeypatch.setattr(pinned_module, "open_version", still_damaged)
    with pytest.raises(VersionNotKept, match="cannot be loaded"):
        pins.get("docs", v1)  # within the pause: refused without a load
    assert calls == []

    def tried_again() -> bool:
        with pytest.raises(VersionNotKept, match="cannot be loaded"):
            pins.get("docs", v1)
        return bool(calls)

    wait_for(tried_again, timeout=5, message="a load after the failure pause")
    assert calls == [v1]


def test_cursors_carry_a_version_and_refuse_what_is_not_one():
    assert cursors.decode(cursors.encode(7, "a.md"), int, str) == [7, "a.md"]
    for forged in (cursors.encode(-1, "a.md"), cursors.encode(True, "a.md"), cursors.encode(1.5, "a.md"),
                   cursors.encode("a.md")):
        with pytest.raises(ValueError):
            cursors.decode(forged, int, str)


def test_pinned_versions_setting_is_at_least_one():
    assert Settings().pinned_versions == 2
    with pytest.raises(SettingsError, match="SWAPLINE_PINNED_VERSIONS"):
        Settings(pinned_versions=0)
