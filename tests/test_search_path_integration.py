"""The search path on real processes: two API processes under gunicorn, a worker, the session's
redis-server (hashing embedder). A search sends no Redis command (counted with MONITOR on the API
processes' own connections); a collection dropped, created or given another default mode is known to
both processes within the swap bound. The API processes poll rarely here, so what they learn in time
they learn from the messages on the swap channel, and the poll cannot add commands to the count."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import psutil
import pytest
import redis
import requests

from tests.support import create_collection, ingest_and_rebuild, search, wait_for

pytestmark = pytest.mark.integration

POLL = "30"  # seconds: no full sync of the API processes' watchers runs during a test
# What a message must achieve on every process, well below the poll above.
MESSAGE_BOUND = 5.0


def _docs(n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"# Doc {i}\nDocument {i} talks about pods, nodes and volumes {i}."}
            for i in range(n)]


@pytest.fixture(scope="module")
def stack(module_settings, module_procs):
    settings, procs = module_settings, module_procs
    first_proc, first = procs.api_proc(settings, name="api1", SWAPLINE_WATCHER_POLL_SECONDS=POLL)
    second_proc, second = procs.api_proc(settings, name="api2", SWAPLINE_WATCHER_POLL_SECONDS=POLL)
    procs.worker(settings)
    create_collection(first, "kept")
    _, rebuild = ingest_and_rebuild(first, _docs(20), "kept")
    version = rebuild["result"]["version"]
    for base in (first, second):
        wait_for(lambda b=base: search(b, "pods", "kept").json().get("index_version") == version, timeout=30,
                 message="both processes to serve the version")
    return settings, [(first_proc, first), (second_proc, second)]


def _api_ports(apis, redis_port: int) -> set[int]:
    """Local ports of the API processes' (gunicorn master and workers) connections to Redis."""
    ports = set()
    for proc, _ in apis:
        master = psutil.Process(proc.popen.pid)
        for p in [master, *master.children(recursive=True)]:
            ports |= {c.laddr.port for c in p.net_connections(kind="tcp") if c.raddr and c.raddr.port == redis_port}
    return ports


class Monitor(threading.Thread):
    """Every command Redis runs until `stop()` (MONITOR), as (client port, command name)."""

    END = "swapline-test-monitor-end"

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.seen: list[tuple[int, str]] = []
        self.started = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as monitor:
            self.started.set()
            for command in monitor.listen():
                if self.END in command["command"]:
                    return
                self.seen.append((int(command.get("client_port") or 0), command["command"].split(" ")[0].upper()))

    def stop(self) -> list[tuple[int, str]]:
        with redis.Redis.from_url(self.url) as client:
            client.echo(self.END)
        self.join(10)
        assert not self.is_alive(), "MONITOR did not see its end marker"
        return self.seen


def _monitor(url: str) -> Monitor:
    monitor = Monitor(url)
    monitor.start()
    assert monitor.started.wait(10)
    time.sleep(0.2)  # MONITOR is registered once Redis answered it; let that reply arrive
    return monitor


def test_searches_send_no_redis_command(stack):
    settings, apis = stack
    redis_port = urlparse(settings.redis_url).port
    for _, base in apis:  # warm: the first requests of a process open its connections
        assert search(base, "volumes", "kept").status_code == 200
    monitor = _monitor(settings.redis_url)
    searches = 200
    with requests.Session() as session:
        for i in range(searches):
            base = apis[i % 2][1]
            resp = session.post(f"{base}/v1/collections/kept/search", json={"query": f"pods {i}", "k": 5}, timeout=30)
            assert resp.status_code == 200, resp.text
            assert len(resp.json()["hits"]) == 5
        # One request that does read Redis (the collection's status), so the count below can see one.
        assert session.get(f"{apis[0][1]}/v1/collections/kept", timeout=30).status_code == 200
    seen = monitor.stop()
    ports = _api_ports(apis, redis_port)
    # The event hub's blocking read (XREAD, once a second, its own connection) runs whatever the requests.
    from_api = [name for port, name in seen if port in ports and name != "XREAD"]
    status_reads = len(from_api)
    assert status_reads > 0, "the status read was not seen: the count cannot tell"
    assert search(apis[0][1], "pods", "kept").status_code == 200
    print(f"redis commands from the API processes: {status_reads} for one status read and {searches} searches")
    # Every command seen belongs to the one status read: a search, per search or not, would add its own.
    monitor = _monitor(settings.redis_url)
    assert requests.get(f"{apis[0][1]}/v1/collections/kept", timeout=30).status_code == 200
    alone = [name for port, name in monitor.stop() if port in _api_ports(apis, redis_port) and name != "XREAD"]
    assert sorted(from_api) == sorted(alone), f"{len(from_api) - len(alone)} commands came with {searches} searches"


def test_a_dropped_collection_answers_404_on_every_process_within_the_bound(stack):
    _, apis = stack
    first = apis[0][1]
    create_collection(first, "dropme")
    _, rebuild = ingest_and_rebuild(first, _docs(5), "dropme")
    for _, base in apis:
        wait_for(lambda b=base: search(b, "pods", "dropme").json().get("index_version") == rebuild["result"]["version"],
                 timeout=MESSAGE_BOUND, message="both processes to serve the new collection")
    resp = requests.delete(f"{first}/v1/collections/dropme", timeout=30)
    assert resp.status_code == 202, resp.text
    started = time.monotonic()
    for _, base in apis:
        wait_for(lambda b=base: search(b, "pods", "dropme").status_code == 404, timeout=MESSAGE_BOUND,
                 message="a 404 for the dropped collection")
    print(f"dropped collection answered 404 on both processes after {time.monotonic() - started:.3f} s")
    assert search(first, "pods", "kept").status_code == 200


def test_a_new_collection_and_a_changed_mode_are_known_at_once(stack):
    _, apis = stack
    first, second = apis[0][1], apis[1][1]
    # Created through the first process; the second learns it from the message, or reads it once.
    create_collection(first, "fresh")
    for base in (first, second):
        resp = search(base, "pods", "fresh")
        assert resp.status_code == 200 and resp.json()["index_version"] is None and resp.json()["hits"] == []
    resp = requests.patch(f"{first}/v1/collections/kept", json={"default_mode": "keyword"}, timeout=30)
    assert resp.status_code == 200, resp.text
    wait_for(lambda: search(second, "pods", "kept").json()["mode"] == "keyword", timeout=MESSAGE_BOUND,
             message="the second process to use the new default mode")
    assert search(first, "pods", "kept").json()["mode"] == "keyword"
    requests.patch(f"{first}/v1/collections/kept", json={"default_mode": None}, timeout=30)
    wait_for(lambda: search(second, "pods", "kept").json()["mode"] == "hybrid", timeout=MESSAGE_BOUND,
             message="the second process to use the service default again")


def test_unknown_names_cost_a_bounded_number_of_redis_reads(stack):
    settings, apis = stack
    redis_port = urlparse(settings.redis_url).port
    monitor = _monitor(settings.redis_url)
    names = 300
    started = time.monotonic()
    with requests.Session() as session:
        for i in range(names):
            resp = session.post(f"{apis[0][1]}/v1/collections/nothing-{i}/search", json={"query": "x"}, timeout=30)
            assert resp.status_code == 404, resp.text
    spent = time.monotonic() - started
    from_api = [name for port, name in monitor.stop() if port in _api_ports(apis, redis_port) and name != "XREAD"]
    # One look-up is two commands (SISMEMBER, HGET); at most 20 a second plus the bucket's depth.
    lookups = from_api.count("SISMEMBER")
    print(f"{names} unknown names in {spent:.2f} s: {lookups} look-ups")
    assert lookups <= 20 * (spent + 1)
