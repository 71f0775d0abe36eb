"""One reader of the event stream per API process, fanning new entries out to every open SSE stream.

Each open stream used to block in its own `XREAD BLOCK` for the whole heartbeat (15 s), longer than the
Redis client's socket timeout (5 s), so every idle stream died with a timeout after 5 s; and a hundred
streams held a hundred Redis connections. Now one hub thread reads with a block well below the socket
timeout (its own connection, reconnecting with backoff when Redis goes away), and streams wait on an
in-memory queue: they touch Redis only to catch up from a `Last-Event-ID` (or after falling behind),
and their heartbeats and end-of-stream do not depend on Redis at all.
"""

from __future__ import annotations

import logging
import queue
import threading

import redis

from shared.backoff import Backoff
from shared.settings import Settings
from shared.store.conn import connect
from shared.store.events import EventLog

log = logging.getLogger(__name__)

# The hub's blocking read: well below the client's socket timeout, and short enough that stopping the
# process does not wait long for the thread.
BLOCK_MS = 1000
READ_COUNT = 500
# Batches a slow stream may have waiting before it is told to catch up from Redis instead.
SUBSCRIBER_BACKLOG = 256
RECONNECT = (0.5, 10.0)  # pauses after Redis errors: doubling from the first, up to the second


class Subscription:
    """What one open stream receives from the hub: batches of decoded events, oldest first."""

    def __init__(self, hub: EventHub):
        self._hub = hub
        self._queue: queue.Queue[list[dict]] = queue.Queue(SUBSCRIBER_BACKLOG)
        # Set when batches were dropped because this stream fell behind: it must catch up from Redis.
        self.lagged = threading.Event()

    def put(self, batch: list[dict]) -> None:
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.lagged.set()

    def get(self, timeout: float) -> list[dict] | None:
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub(threading.Thread):
    def __init__(self, settings: Settings):
        super().__init__(name="swapline-event-hub", daemon=True)
        # Its own client: a socket timeout above the block time, and no retries inside a read (the loop
        # below retries with its own backoff).
        self.events = EventLog(connect(settings, retries=0), settings.events_max_len)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.connected = threading.Event()
        self.errors = 0

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.join(timeout)
        self.events.r.close()

    def run(self) -> None:
        after: str | None = None
        backoff = Backoff(*RECONNECT)
        while not self._stopping.is_set():
            try:
                if after is None:
                    after = self.events.last_id()
                batch = self.events.read_after(after, count=READ_COUNT, block_ms=BLOCK_MS)
                if ended := backoff.succeeded():
                    log.info("event=events.hub_reconnected after_failures=%s", ended)
                self.connected.set()
            except (redis.RedisError, OSError) as exc:
                delay = backoff.failed()
                self.errors += 1
                self.connected.clear()
                if backoff.worth_logging:
                    log.warning("event=events.hub_redis_error error=%r retry_in=%.1f", str(exc), delay)
                self._stopping.wait(delay)
                continue
            if batch:
                after = batch[-1]["id"]
                with self._lock:
                    subscribers = list(self._subscribers)
                for sub in subscribers:
                    sub.put(batch)
