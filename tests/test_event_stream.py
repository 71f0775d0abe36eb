"""The SSE generator at the default settings (15 s heartbeat, 300 s maximum), on a simulated clock:
what a client of a real process would see over five minutes, in milliseconds. tests/chaos/test_api.py
holds 100 real streams past the real heartbeat."""

from __future__ import annotations

import fakeredis
import redis

from shared.settings import Settings
from shared.store.events import EventLog
from webapp.api.routes.events import KEEPALIVE, event_stream


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSubscription:
    """Waiting advances the simulated clock instead of sleeping; hands out batches put in `pending`."""

    def __init__(self, clock: Clock):
        import threading

        self.clock, self.pending = clock, []
        self.lagged = threading.Event()

    def get(self, timeout: float):
        if self.pending:
            return self.pending.pop(0)
        self.clock.now += timeout
        return None

    def drain(self) -> None:
        self.pending.clear()


def test_default_stream_beats_every_15_s_and_ends_after_300_s_with_a_final_comment():
    settings = Settings()
    clock = Clock()
    events = EventLog(fakeredis.FakeRedis(decode_responses=True), 1000)
    sub = FakeSubscription(clock)
    started = clock.now
    frames = []
    for frame in event_stream(events, sub, "0-0", None, settings.sse_heartbeat_seconds, settings.sse_max_seconds,
                              clock=clock):
        frames.append((clock.now - started, frame))
        if len(frames) == 3:  # an event arrives 40 s in; the beat restarts from it
            first = events.append("job.progress", job_id="a" * 32, collection="docs", data={"done": 1})
            sub.pending.append(events.read_after("0-0"))
    beats = [t for t, f in frames if f == KEEPALIVE]
    assert beats[:2] == [15.0, 30.0]
    assert any(first in f for _, f in frames)
    assert all(b - a <= 15.0 for a, b in zip(beats, beats[1:], strict=False))
    last_time, last = frames[-1]
    assert last_time == settings.sse_max_seconds == 300.0
    assert last.startswith(": this stream ends after 300 s; reconnect with Last-Event-ID: ")
    assert first in last


def test_a_redis_outage_delays_the_catch_up_but_never_breaks_the_stream():
    clock = Clock()

    class Down(EventLog):
        def read_after(self, after, count=100, block_ms=None):
            raise redis.ConnectionError("down")

        def oldest_id(self):
            raise redis.ConnectionError("down")

    sub = FakeSubscription(clock)
    frames = list(event_stream(Down(None, 1000), sub, "5-0", None, 15.0, 60.0, clock=clock))
    assert frames[-1].startswith(": this stream ends after 60 s")
    assert frames.count(KEEPALIVE) == 4  # at 15, 30, 45 and 60 s
