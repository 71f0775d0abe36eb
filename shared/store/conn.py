"""Redis connections and Lua script loading."""

from __future__ import annotations

from importlib import resources

import redis

LUA_LIBRARY = ("lib", "events.lua")


def connect(url: str) -> redis.Redis:
    """A client that answers str, with a health check so idle pooled connections are revalidated."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


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
