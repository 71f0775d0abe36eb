"""Redis connections and Lua script loading."""

from __future__ import annotations

from importlib import resources

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

LUA_LIBRARY = ("lib", "events.lua")

# A command that meets a broken connection or a timeout reconnects and tries again, with jittered
# exponential pauses; past the retries the caller gets the error (and maps it: 503 on the API, a task
# retry on a worker). Every process reconnects by itself when Redis comes back; nothing needs a restart.
SOCKET_TIMEOUT = 5.0


def connect(url: str, retries: int = 3, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A client that answers str, with a health check so idle pooled connections are revalidated.

    Blocking reads (XREAD BLOCK, pub/sub waits) must block for less than `socket_timeout`, or the read
    fails with a timeout while it is merely waiting.

    redis-py types every reply as `bytes | str` whatever decode_responses says, so the stores cast
    what they read to the str types it is."""
    return redis.Redis.from_url(
        url, decode_responses=True, health_check_interval=30, socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout, retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries))


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
