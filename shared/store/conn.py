"""Redis connections and Lua script loading."""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared import keys
from shared.settings import Settings

LUA_LIBRARY = ("lib", "events.lua")

# A command that meets a broken connection or a timeout reconnects and tries again, with jittered
# exponential pauses; past the retries the caller gets the error (and maps it: 503 on the API, a task
# retry on a worker). Every process reconnects by itself when Redis comes back; nothing needs a restart.
SOCKET_TIMEOUT = 5.0


class NotReplicated(redis.ConnectionError):
    """A write reached the primary but not the replicas it must reach before it is acknowledged (see
    `confirm`). A ConnectionError, so it is handled as Redis being unavailable: the API answers 503 with
    Retry-After and a task runs its attempt again; every write it follows is safe to repeat."""


def connect(settings: Settings, retries: int = 3, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A client of the Redis primary that answers str, with a health check so idle pooled connections
    are revalidated.

    With `SWAPLINE_REDIS_SENTINELS` the primary is found through Sentinel, again on every new connection,
    so after a failover the next command (retried here) reaches the promoted replica; a connection to an
    old primary that became a replica is dropped on its first READONLY answer. Without it,
    `SWAPLINE_REDIS_URL` names the server.

    Blocking reads (XREAD BLOCK, pub/sub waits) must block for less than `socket_timeout`, or the read
    fails with a timeout while it is merely waiting.

    redis-py types every reply as `bytes | str` whatever decode_responses says, so the stores cast
    what they read to the str types it is."""
    options: dict[str, Any] = dict(
        decode_responses=True, health_check_interval=30, socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout, retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries))
    if settings.sentinel_nodes:
        url = urlsplit(settings.redis_url)
        db = int(url.path.strip("/") or 0)
        sentinel = Sentinel(settings.sentinel_nodes, socket_timeout=socket_timeout,
                            socket_connect_timeout=socket_timeout,
                            sentinel_kwargs={"socket_timeout": socket_timeout,
                                             "password": settings.redis_sentinel_password or None})
        client = sentinel.master_for(settings.redis_sentinel_master, db=db,
                                     password=unquote(url.password) if url.password else None,
                                     username=unquote(url.username) if url.username else None, **options)
    else:
        client = redis.Redis.from_url(settings.redis_url, **options)
    client.swapline_min_replicas = settings.acknowledged_replicas
    client.swapline_wait_ms = settings.redis_wait_ms
    return client


def confirm(client: redis.Redis) -> None:
    """Return once the replicas this deployment acknowledges with hold every write made so far, or raise
    NotReplicated. Call it before acknowledging: a 202, a fence put to use, a publish reported done.

    The replicas waited for are `SWAPLINE_REDIS_MIN_REPLICAS` (with Sentinel), or every replica connected
    to the primary when fewer are: just after a failover the promoted primary has no replica until the
    old one rejoins, and refusing every write until then would turn a 3 s failover into an outage. A
    replica that is not connected gets everything when it reconnects (it resyncs); the one gap left is a
    replica cut off for a moment that Sentinel still promotes, which only more replicas close (README,
    High availability).

    WAIT counts the writes of the connection it runs on, and a pooled client may have written on another
    one: so one pipeline writes a probe key and waits on the same connection. Redis replicates one
    ordered stream, so a replica holding the probe holds every write completed before it, by any client
    (a Celery message sent just before included). A client without the setting (no Sentinel, a test's
    fakeredis) confirms at once."""
    wanted = getattr(client, "swapline_min_replicas", 0)
    if not wanted:
        return
    role = client.execute_command("ROLE")
    if role[0] != "master":
        raise NotReplicated("the server this client reached is no longer the primary; retry shortly")
    needed = min(wanted, len(role[2]))
    if not needed:
        return
    wait_ms = getattr(client, "swapline_wait_ms", 1000)
    pipe = client.pipeline(transaction=False)
    pipe.incr(keys.replication_probe())
    pipe.wait(needed, wait_ms)
    got = int(pipe.execute()[1])
    if got < needed:
        raise NotReplicated(f"a write reached {got} of the {needed} connected replica(s) it must reach within "
                            f"{wait_ms} ms (SWAPLINE_REDIS_MIN_REPLICAS); retry shortly")


def _lua(*parts: str) -> str:
    return resources.files("shared").joinpath("lua", *parts).read_text()


def load_script(client: redis.Redis, name: str):
    """Register `shared/lua/{name}.lua`, with the shared Lua library before it, with the client
    (EVALSHA with automatic fallback to EVAL)."""
    return client.register_script(_lua(*LUA_LIBRARY) + "\n" + _lua(f"{name}.lua"))


def delete_if_equals(client: redis.Redis, key: str, value: str) -> bool:
    """Delete `key` only while it still holds `value` (WATCH/MULTI); True when deleted."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.get(key) != value:
                return False
            pipe.multi()
            pipe.delete(key)
            pipe.execute()
            return True
        except redis.WatchError:
            return False  # changed meanwhile: it no longer holds `value`
