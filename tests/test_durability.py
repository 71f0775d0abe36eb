"""Acknowledged writes wait for a replica (WAIT), Sentinel settings, reader leases on served versions,
and the layout check with its forward-only migrations."""

from __future__ import annotations

import json
import signal

import fakeredis
import numpy as np
import pytest
import redis
import requests

from shared import keys
from shared.jobs import upgrade
from shared.jobs.versions import collect_versions
from shared.settings import Settings, SettingsError, load_settings
from shared.store.conn import NotReplicated, confirm, connect
from shared.store.replicas import ReplicaStore
from tests.support import RedisServer, create_collection, ingest_and_rebuild, make_services, search, wait_for

# Settings


def test_sentinel_settings_parse_and_refuse_malformed_entries():
    settings = load_settings({"SWAPLINE_REDIS_SENTINELS": "10.0.0.1:26379, s2:26380,[::1]:26381"})
    assert settings.sentinel_nodes == (("10.0.0.1", 26379), ("s2", 26380), ("::1", 26381))
    assert settings.redis_sentinel_master == "swapline" and settings.acknowledged_replicas == 1
    assert Settings().sentinel_nodes == () and Settings().acknowledged_replicas == 0  # one server: no WAIT
    no_wait = load_settings({"SWAPLINE_REDIS_SENTINELS": "s1:1", "SWAPLINE_REDIS_MIN_REPLICAS": "0"})
    assert no_wait.acknowledged_replicas == 0
    with pytest.raises(SettingsError, match="SWAPLINE_REDIS_WAIT_MS"):
        Settings(redis_wait_ms=6000)
    for bad in ("s1", "s1:port", ":26379", "s1:70000"):
        with pytest.raises(SettingsError, match="SWAPLINE_REDIS_SENTINELS"):
            Settings(redis_sentinels=bad)


def test_celery_follows_the_sentinels():
    from shared.celeryconfig import celery_config

    conf = celery_config(Settings(redis_url="redis://:pw@ignored:6379/3", redis_sentinels="s1:26379,s2:26380",
                                  redis_sentinel_master="main"))
    assert conf["broker_url"] == "sentinel://:pw@s1:26379/3;sentinel://:pw@s2:26380/3"
    assert conf["broker_transport_options"]["master_name"] == "main"
    assert conf["result_backend"] == conf["broker_url"]
    assert celery_config(Settings(redis_url="redis://h:1/0"))["broker_url"] == "redis://h:1/0"


# WAIT


def test_confirm_is_free_without_replicas_to_wait_for():
    fake = fakeredis.FakeRedis(decode_responses=True)
    confirm(fake)  # no setting: nothing waited, nothing written
    assert fake.dbsize() == 0


@pytest.mark.integration
def test_confirm_waits_for_connected_replicas(tmp_path):
    """No replica connected: nothing to wait for (a promoted primary accepts work before the old one
    rejoins). A connected replica: a write is confirmed once it holds it, refused while it does not
    answer (paused)."""
    primary = RedisServer(tmp_path / "primary")
    replica = None
    try:
        # The default wait (2 s) where a write must be confirmed: a loaded machine (the suite runs its chaos
        # tests beside the rest) once kept a healthy replica's acknowledgement past a 300 ms wait.
        settings = Settings(redis_url=primary.url, redis_sentinels="127.0.0.1:1")
        # The client a Sentinel deployment gets, pointed at the primary directly (no Sentinel runs here).
        client = connect(settings.with_(redis_sentinels=""))
        client.swapline_min_replicas, client.swapline_wait_ms = settings.acknowledged_replicas, settings.redis_wait_ms
        client.set("k", "v")
        confirm(client)
        assert client.get(keys.replication_probe()) is None  # nothing waited for, nothing written
        replica = RedisServer(tmp_path / "replica")
        rep = redis.Redis.from_url(replica.url, decode_responses=True)
        rep.replicaof("127.0.0.1", primary.port)
        # Connected as the primary sees it (ROLE lists it once the snapshot is sent): what confirm counts.
        wait_for(lambda: client.execute_command("ROLE")[2], timeout=20, message="the replica to sync")
        # And the replica done loading that snapshot, so it acknowledges offsets: listed but still loading,
        # it missed the 300 ms wait below once in CI.
        wait_for(lambda: rep.info("replication").get("master_link_status") == "up"
                 and not rep.info("persistence").get("loading"), timeout=20, message="the replica to load")
        client.set("k", "w")
        confirm(client)
        assert rep.get("k") == "w"
        assert replica.popen is not None
        replica.popen.send_signal(signal.SIGSTOP)
        client.swapline_wait_ms = 300  # a refusal waits the whole wait: a short one keeps the test quick
        try:
            client.set("k", "x")
            with pytest.raises(NotReplicated, match="0 of the 1 connected replica.*within 300 ms"):
                confirm(client)
        finally:
            replica.popen.send_signal(signal.SIGCONT)
            client.swapline_wait_ms = settings.redis_wait_ms
        assert isinstance(NotReplicated("x"), redis.ConnectionError)  # the API's 503, a task's retry
        confirm(client)
        rep.close()
        client.close()
    finally:
        for server in (replica, primary):
            if server is not None and server.popen is not None:
                server.popen.kill()  # a replica's shutdown may wait on its link; nothing here needs to persist
                server.popen.wait(10)


# Reader leases


def test_a_leased_version_outlives_its_heartbeat_and_is_released_on_swap():
    fake = fakeredis.FakeRedis(decode_responses=True)
    store = ReplicaStore(fake, ttl_seconds=30, lease_seconds=900)
    store.heartbeat("api-1", {"docs": 3, "notes": 1})
    store.heartbeat("api-2", {"docs": 4})
    assert store.leased("docs") == {3, 4}
    fake.delete(keys.replica("api-1"), keys.replicas())  # heartbeats gone (a paused process)
    assert store.versions() == {} and store.leased("docs") == {3, 4}
    store.release("api-2", "docs", 4)
    assert store.leased("docs") == {3}
    store.unregister("api-1", {"docs": 3, "notes": 1})
    assert store.leased("docs") == set() and store.leased("notes") == set()
    short = ReplicaStore(fake, ttl_seconds=30, lease_seconds=-1)  # already expired
    short.heartbeat("api-3", {"docs": 5})
    assert short.leased("docs") == set() and fake.zcard(keys.readers("docs")) == 0


def test_collection_keeps_leased_versions(tmp_path):
    settings = Settings(embedder="hash", data_dir=tmp_path / "data", versions_keep=1)
    svc = make_services(settings, fakeredis.FakeRedis(decode_responses=True))
    indexes = svc.storage.indexes_dir("docs")
    for version in (1, 2, 3):
        (indexes / f"v{version}").mkdir(parents=True)
        svc.redis.hset(keys.pointer("docs"), mapping={"version": version, "fence": version})
    svc.redis.lpush(keys.pointer_history("docs"), json.dumps({"version": 3, "fence": 3}))
    svc.replicas.heartbeat("paused-api", {"docs": 1})
    svc.redis.delete(keys.replica("paused-api"), keys.replicas())  # its heartbeat expired, its lease did not
    assert collect_versions(svc, "docs") == [2]
    svc.replicas.release("paused-api", "docs", 1)
    assert collect_versions(svc, "docs") == [1]


@pytest.mark.integration
def test_a_paused_api_process_keeps_its_version_through_collection(procs, settings):
    """SIGSTOP an API process, publish past `versions_keep` and collect: the paused process's version
    stays on disk (default reader lease, a heartbeat TTL far shorter than the pause); resumed, it
    answers, swaps, and releases it."""
    settings = settings.with_(replica_ttl_seconds=1, versions_keep=1)
    assert settings.reader_lease_seconds == Settings.reader_lease_seconds == 900
    procs.worker(settings)
    paused, base = procs.api_proc(settings, name="paused")
    create_collection(base)
    _ingest, first = ingest_and_rebuild(base, [{"id": "a", "text": "# A\nalpha one"}])
    v1 = first["result"]["version"]
    wait_for(lambda: search(base, "alpha").json().get("index_version") == v1, timeout=30)
    paused.signal(signal.SIGSTOP)
    try:
        other = procs.api(settings, name="other")
        for i in range(3):
            ingest_and_rebuild(other, [{"id": f"b{i}", "text": f"# B\nbeta {i}"}])
        svc = make_services(settings)
        wait_for(lambda: all(v.get("docs") != v1 for v in svc.replicas.versions().values()), timeout=20,
                 message="the paused process's heartbeat to expire")
        collect_versions(svc, "docs")
        assert svc.storage.version_dir("docs", v1).is_dir()
        assert v1 in svc.replicas.leased("docs")
    finally:
        paused.signal(signal.SIGCONT)
    answer = search(base, "beta").json()
    assert answer["hits"], answer
    latest = svc.pointers.get("docs")["version"]
    wait_for(lambda: search(base, "beta").json()["index_version"] == latest, timeout=30)
    wait_for(lambda: v1 not in svc.replicas.leased("docs"), timeout=30, message="the lease released after the swap")
    collect_versions(svc, "docs")
    assert not svc.storage.version_dir("docs", v1).is_dir()
    assert np.isfinite(answer["hits"][0]["score"])


# Layouts


def fake_services(tmp_path):
    settings = Settings(embedder="hash", data_dir=tmp_path / "data")
    return make_services(settings, fakeredis.FakeRedis(decode_responses=True))


def test_an_empty_data_dir_and_redis_are_marked_current(tmp_path):
    svc = fake_services(tmp_path)
    assert upgrade.check(svc)["found"] == {"data": None, "redis": None}
    assert upgrade.data_layout(svc) == upgrade.LAYOUT == upgrade.redis_layout(svc)
    assert upgrade.check(svc) == {"found": {"data": upgrade.LAYOUT, "redis": upgrade.LAYOUT}, "migrated": []}


def test_state_from_before_layouts_is_migrated_once(tmp_path):
    """Layout 0 kept sources in Redis only: the migration to 1 writes them into the data dir."""
    svc = fake_services(tmp_path)
    svc.storage.segments_dir("docs").mkdir(parents=True)
    svc.collections.create("docs")
    svc.collections.create("plain")
    source = svc.sources.create("docs", "/srv/repo", ["**/*.md"], [], watch=True)
    assert svc.storage.read_sources("docs") == []
    result = upgrade.check(svc)
    assert [r["id"] for r in svc.storage.read_sources("docs")] == [source["id"]]
    assert svc.storage.read_sources("docs")[0]["path"] == "/srv/repo" and svc.storage.read_sources("plain") == []
    assert result["found"] == {"data": 0, "redis": 0}
    steps = [m.to for m in upgrade.MIGRATIONS]
    assert result["migrated"] == [f"data:{to}" for to in steps] + [f"redis:{to}" for to in steps]
    assert upgrade.LAYOUT == 1 and upgrade.data_layout(svc) == upgrade.redis_layout(svc) == 1
    assert upgrade.check(svc)["migrated"] == []
    assert svc.redis.get(keys.upgrade_lock()) is None


def test_a_newer_layout_is_refused(tmp_path):
    svc = fake_services(tmp_path)
    svc.layout.set(upgrade.LAYOUT + 1)
    with pytest.raises(upgrade.LayoutTooNew, match="newer Swapline"):
        upgrade.check(svc)
    svc.layout.set(upgrade.LAYOUT)
    svc.storage.write_file(svc.storage.layout_path(), json.dumps({"layout": upgrade.LAYOUT + 1}).encode(), "test")
    with pytest.raises(upgrade.LayoutTooNew, match="The data dir is at layout"):
        upgrade.check(svc)


@pytest.mark.integration
def test_an_api_refuses_to_serve_a_newer_layout(procs, settings, rclient):
    rclient.set(keys.layout(), upgrade.LAYOUT + 1)
    base = procs.api(settings, ready=False)
    ready = wait_for(lambda: (r := requests.get(f"{base}/readyz", timeout=5)).status_code == 503
                     and "layout" in r.json()["checks"] and r.json(), timeout=30)
    assert ready["checks"]["index_watcher"] is False
    assert ready["checks"]["layout"].startswith(f"Redis is at layout {upgrade.LAYOUT + 1}: written by a newer")


def test_the_broker_keeps_swaplines_transport_across_a_switch_to_the_next_sentinel():
    """kombu picks the transport from the URL scheme again when it moves to the next URL after a
    connection error: Swapline's QoS (which leaves an unsettleable message unacked instead of ending
    the worker) must survive that switch."""
    from shared.celeryconfig import RedisTransport, SentinelTransport, make_celery

    app = make_celery(Settings(redis_sentinels="127.0.0.1:1,127.0.0.1:2"))
    with app.connection_for_write() as conn:
        assert type(conn.transport) is SentinelTransport
        conn.maybe_switch_next()
        assert conn.hostname == "127.0.0.1" and conn.port == 2
        assert type(conn.transport) is SentinelTransport
    with make_celery(Settings(redis_url="redis://127.0.0.1:1/0")).connection_for_write() as conn:
        assert type(conn.transport) is RedisTransport


@pytest.mark.integration
def test_a_worker_runs_no_job_on_a_newer_layout(procs, settings, rclient):
    from shared.celeryconfig import enqueue, make_celery
    from shared.jobs.submit import submit_documents
    from shared.services import build_services

    rclient.set(keys.layout(), upgrade.LAYOUT + 1)
    worker = procs.worker(settings)
    celery = make_celery(settings)
    svc = build_services(settings, lambda kind, job_id: enqueue(celery, kind, job_id), torch_threads=1)
    svc.collections.create("docs")
    job = submit_documents(svc, "docs", [{"id": "a", "text": "# A\nalpha"}], rebuild=False)
    wait_for(lambda: "event=task.layout_too_new" in worker.log(), timeout=30, message="the worker to refuse")
    assert svc.jobs.get(job["id"])["state"] == "queued" and not svc.collections.segments("docs")
