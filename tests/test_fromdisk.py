"""Redis state rebuilt from the data dir (`shared.jobs.fromdisk`): domain code on fakeredis with the
hashing embedder, Redis emptied between the build and the recover."""

from __future__ import annotations

import json

import fakeredis
import pytest

from shared import keys
from shared.index.vectorindex import MANIFEST_FILE
from shared.jobs.deletion import run_delete
from shared.jobs.fromdisk import adopt_collection, recover_from_disk, save_sources
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import submit_delete, submit_documents
from shared.jobstates import SUCCEEDED
from shared.settings import Settings
from tests.support import make_services

DOCS = [
    {"id": "a", "text": "# Alpha\nPods with higher priority preempt lower priority pods."},
    {"id": "b", "text": "# Beta\nPersistent volumes are resized online."},
    {"id": "c", "text": "# Gamma\nServices get both IPv4 and IPv6 addresses.\n\n" + "more words here " * 80},
]


@pytest.fixture
def env(tmp_path):
    enqueued: list[tuple[str, str]] = []
    client = fakeredis.FakeRedis(decode_responses=True)
    svc = make_services(Settings(embedder="hash", data_dir=tmp_path / "data", redis_url="redis://x"), client,
                        enqueued)
    yield svc, enqueued, client
    client.close()


def _run_all(svc, enqueued) -> None:
    while enqueued:
        kind, job_id = enqueued.pop(0)
        {"ingest": run_ingest, "rebuild": run_rebuild, "delete": run_delete}[kind](svc, job_id)
        assert svc.jobs.get(job_id)["state"] == SUCCEEDED, svc.jobs.get(job_id)


def _fill(svc, enqueued, name: str) -> None:
    svc.collections.create(name)
    submit_documents(svc, name, DOCS[:2], rebuild=True)
    _run_all(svc, enqueued)
    submit_documents(svc, name, [{**DOCS[1], "text": DOCS[1]["text"] + " Changed."}, DOCS[2]], rebuild=True)
    _run_all(svc, enqueued)
    submit_delete(svc, name, ["a"])
    _run_all(svc, enqueued)


def _state(client, name: str) -> dict:
    pointer = client.hgetall(keys.pointer(name))
    pointer.pop("published_at", None)
    col = client.hgetall(keys.collection(name))
    return {"docs": client.hgetall(keys.collection_docs(name)), "segments": client.lrange(keys.segments(name), 0, -1),
            "chunks": col["chunks"], "changes": col["changes"], "segseq": client.get(keys.segment_seq(name)),
            "pointer": pointer, "history": [json.loads(h)["version"] for h in
                                            client.lrange(keys.pointer_history(name), 0, -1)]}


def test_adopt_rebuilds_what_redis_held(env):
    svc, enqueued, client = env
    _fill(svc, enqueued, "docs")
    before = _state(client, "docs")
    fence = int(client.get(keys.fence("docs")))
    client.flushall()
    swaps = client.pubsub(ignore_subscribe_messages=True)
    swaps.subscribe(keys.swap_channel())

    result = recover_from_disk(svc)
    assert result["recovered"] == 1 and result["skipped"] == 0 and result["embedded"] == 0
    # API processes are told at once, as by a publish, instead of at their next poll.
    message = next(filter(None, (swaps.get_message(timeout=0.2) for _ in range(10))), None)
    assert message, "no swap message"
    assert json.loads(message["data"]) == {"collection": "docs", "version": int(before["pointer"]["version"])}
    assert result["documents"] == 2 and result["segments"] == 3 and result["versions"] == 3
    after = _state(client, "docs")
    # The publish time is the build time after a recover: everything else is what the publishes wrote.
    assert after["pointer"].pop("built_at")[:10] == before["pointer"].pop("built_at")[:10]
    assert after == before
    assert int(client.get(keys.fence("docs"))) >= fence  # at least every fence on disk
    assert svc.collections.info("docs")["documents"] == 2
    assert not client.hgetall(keys.embedded_chunks())  # nothing embedded

    # Known collections are left alone; a further ingest and rebuild go on incrementally above the fences.
    assert adopt_collection(svc, "docs")["skipped"]
    submit_documents(svc, "docs", [{"id": "d", "text": "# Delta\nA new document."}], rebuild=True)
    kind, ingest_id = enqueued.pop(0)
    run_ingest(svc, ingest_id)
    kind, rebuild_id = enqueued.pop(0)
    run_rebuild(svc, rebuild_id)
    done = svc.jobs.get(rebuild_id)
    assert done["state"] == SUCCEEDED and done["result"]["version"] > int(before["pointer"]["version"])
    assert done["result"]["incremental"] is True
    assert svc.jobs.get(ingest_id)["result"]["segment"] == int(before["segseq"]) + 1


def test_a_damaged_version_is_skipped_and_reported(env):
    svc, enqueued, client = env
    _fill(svc, enqueued, "docs")
    newest = int(client.hget(keys.pointer("docs"), "version"))
    manifest = svc.storage.version_dir("docs", newest) / MANIFEST_FILE
    data = json.loads(manifest.read_text())
    data["checksum"] = "0" * 64
    manifest.write_text(json.dumps(data))
    client.flushall()
    result = recover_from_disk(svc)
    adopted = result["collections"][0]
    assert [r["version"] for r in adopted["refused_versions"]] == [newest]
    assert adopted["version"] < newest and result["versions"] == 2
    assert int(client.hget(keys.pointer("docs"), "version")) == adopted["version"]
    assert int(client.get(keys.fence("docs"))) >= newest  # the refused version's fence is never reused


def test_sources_come_back_from_their_file(env, tmp_path):
    svc, enqueued, client = env
    svc.collections.create("docs")
    source = svc.sources.create("docs", str(tmp_path), ["*.md"], [], True, "src/")
    save_sources(svc, "docs")
    submit_documents(svc, "docs", DOCS[:1], rebuild=True)
    _run_all(svc, enqueued)
    client.flushall()
    assert recover_from_disk(svc)["sources"] == 1
    back = svc.sources.get(source["id"])
    assert back is not None and back["path"] == str(tmp_path) and back["include"] == ["*.md"]
    assert back["watch"] is True and back["prefix"] == "src/" and svc.sources.file_count(source["id"]) == 0
    assert [s["id"] for s in svc.sources.of_collection("docs")] == [source["id"]]


def test_nothing_on_disk_recovers_nothing(env):
    svc, _, _ = env
    assert recover_from_disk(svc) == {"collections": [], "recovered": 0, "skipped": 0, "versions": 0,
                                      "refused_versions": 0, "segments": 0, "documents": 0, "sources": 0,
                                      "embedded": 0}
