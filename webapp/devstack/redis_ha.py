"""A Redis set that survives the loss of its primary: a primary, a replica and three Sentinels on
loopback, each from a config file of its own (Redis and Sentinel rewrite them on failover, so a restart
keeps the roles they ended with). `make run --ha` starts one, and so do the failover tests.

Three Sentinels with a quorum of two: one Sentinel lost still leaves a majority to elect the leader that
promotes the replica. Every Swapline process finds the primary by asking them (SWAPLINE_REDIS_SENTINELS).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

MASTER_NAME = "swapline"
HOST = "127.0.0.1"
QUORUM = 2
SENTINELS = 3
# A primary that answers no PING for this long is down in a Sentinel's eyes; with the quorum agreeing,
# the failover starts. Shorter fails over sooner but risks a failover on a pause (a fork, a busy host).
DOWN_AFTER_MS = 5000
# How long a failover may take before another Sentinel may try again (twice this).
FAILOVER_TIMEOUT_MS = 30000
# Each member's name: its folder (redis3... for more replicas), and its child's name under `make run --ha`.
SERVER_NAMES = ("redis1", "redis2")
SENTINEL_NAMES = ("sentinel1", "sentinel2", "sentinel3")
LAYOUT_FILE = "layout.json"


@dataclass(frozen=True)
class Layout:
    """Ports and folders of one set. `servers` are the data servers (`make run --ha`: two), the first
    started as primary, the others as its replicas."""
    root: Path
    servers: tuple[int, ...]
    sentinels: tuple[int, int, int]

    def server_dir(self, i: int) -> Path:
        return self.root / f"redis{i + 1}"

    def sentinel_dir(self, i: int) -> Path:
        return self.root / SENTINEL_NAMES[i]

    @property
    def sentinels_setting(self) -> str:
        """The SWAPLINE_REDIS_SENTINELS value: host:port,host:port,..."""
        return sentinels_string(self.sentinels)

    @property
    def ports(self) -> tuple[int, ...]:
        return (*self.servers, *self.sentinels)

    def save(self) -> None:
        (self.root / LAYOUT_FILE).write_text(json.dumps({"servers": self.servers, "sentinels": self.sentinels}))

    @classmethod
    def load(cls, root: Path) -> Layout | None:
        """The layout a previous start saved in `root` (the config files there name these ports)."""
        try:
            saved = json.loads((root / LAYOUT_FILE).read_text())
            return cls(root, tuple(saved["servers"]), tuple(saved["sentinels"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def sentinels_string(ports: Sequence[int], host: str = HOST) -> str:
    return ",".join(f"{host}:{port}" for port in ports)


def server_conf(port: int, data_dir: Path, replica_of: int | None = None, min_replicas: int = 0,
                logfile: str = "") -> str:
    """A data server's config. `min_replicas` > 0 makes a primary refuse writes while fewer replicas
    are connected and fresh (min-replicas-to-write): off by default, WAIT after acknowledged writes is
    what keeps them (SWAPLINE_REDIS_MIN_REPLICAS)."""
    lines = [
        f"port {port}", f"bind {HOST}", f"dir {data_dir}",
        # Jobs, pointers and queued messages survive a restart: AOF fsynced every second, no RDB forks.
        "appendonly yes", "appendfsync everysec", 'save ""',
        "daemonize no", f'logfile "{logfile}"',
        # Sentinels and clients reach replicas at the address they announce.
        f"replica-announce-ip {HOST}",
    ]
    if replica_of is not None:
        lines.append(f"replicaof {HOST} {replica_of}")
    if min_replicas:
        lines += [f"min-replicas-to-write {min_replicas}", "min-replicas-max-lag 10"]
    return "\n".join(lines) + "\n"


def sentinel_conf(port: int, data_dir: Path, primary: int, down_after_ms: int = DOWN_AFTER_MS,
                  failover_timeout_ms: int = FAILOVER_TIMEOUT_MS, logfile: str = "") -> str:
    """A Sentinel's config (Sentinel rewrites it: it must be writable, in a folder of its own)."""
    return "\n".join([
        f"port {port}", f"bind {HOST}", f"dir {data_dir}", "daemonize no", f'logfile "{logfile}"',
        f"sentinel announce-ip {HOST}",
        f"sentinel monitor {MASTER_NAME} {HOST} {primary} {QUORUM}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
        f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
    ]) + "\n"


def write_configs(layout: Layout, down_after_ms: int = DOWN_AFTER_MS,
                  failover_timeout_ms: int = FAILOVER_TIMEOUT_MS, min_replicas: int = 0,
                  logs: bool = False, overwrite: bool = True) -> None:
    """Write every member's config file (with `logs`, each logs to a file in its folder, else to
    stdout). Without `overwrite`, existing files are kept: they hold the roles of the last run."""
    primary = layout.servers[0]
    for i, port in enumerate(layout.servers):
        folder = layout.server_dir(i)
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "redis.conf"
        if overwrite or not conf.exists():
            conf.write_text(server_conf(port, folder, None if i == 0 else primary, min_replicas,
                                        str(folder / "redis.log") if logs else ""))
    for i, port in enumerate(layout.sentinels):
        folder = layout.sentinel_dir(i)
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"
        if overwrite or not conf.exists():
            conf.write_text(sentinel_conf(port, folder, primary, down_after_ms, failover_timeout_ms,
                                          str(folder / "sentinel.log") if logs else ""))


def server_argv(binary: Path, layout: Layout, i: int) -> list[str]:
    return [str(binary), str(layout.server_dir(i) / "redis.conf")]


def sentinel_argv(binary: Path, layout: Layout, i: int) -> list[str]:
    return [str(binary), str(layout.sentinel_dir(i) / "sentinel.conf"), "--sentinel"]


def _client(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       decode_responses=True)


def master_port(sentinels: Sequence[int]) -> int | None:
    """The primary's port as the first Sentinel that answers names it (None: none answers)."""
    for port in sentinels:
        client = _client(port)
        try:
            addr = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            if addr:
                return int(addr[1])
        except redis.RedisError:
            continue
        finally:
            client.close()
    return None


def role(port: int) -> tuple[str, int | None, bool]:
    """A data server's role ("master" or "slave"), the port of its primary, and whether its link to
    the primary is up (always True for a primary)."""
    client = _client(port)
    try:
        info = client.info("replication")
    finally:
        client.close()
    if info["role"] == "master":
        return "master", None, True
    return "slave", int(info["master_port"]), info.get("master_link_status") == "up"


def ready(layout: Layout) -> int | None:
    """The primary's port once every Sentinel names the same primary (one of the servers) and knows the
    other servers as its replicas and the two other Sentinels, and the replicas are in sync: a failover
    can happen from here on. None until then."""
    named = set()
    for port in layout.sentinels:
        client = _client(port)
        try:
            state = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        except redis.RedisError:
            return None
        finally:
            client.close()
        fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
        if (int(fields["num-slaves"]) < len(layout.servers) - 1
                or int(fields["num-other-sentinels"]) < SENTINELS - 1):
            return None
        named.add(int(fields["port"]))
    if len(named) != 1 or not named <= set(layout.servers):
        return None
    primary = named.pop()
    replicas = [port for port in layout.servers if port != primary]
    try:
        in_sync = role(primary)[0] == "master" and all(role(r) == ("slave", primary, True) for r in replicas)
    except redis.RedisError:
        return None
    return primary if in_sync else None


def wait_ready(layout: Layout, timeout: float = 60.0, alive: Callable[[], bool] = lambda: True) -> int:
    """Poll `ready` until the set can fail over; returns the primary's port. `alive()` false means a
    member exited (RuntimeError); TimeoutError at the deadline."""
    started = time.monotonic()
    while (primary := ready(layout)) is None:
        if not alive():
            raise RuntimeError("a member of the Redis HA set exited while it was starting")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the Redis HA set in {layout.root} was not ready within {timeout:g} s "
                               "(Sentinels must see the primary, the replica and each other)")
        time.sleep(0.2)
    return primary
