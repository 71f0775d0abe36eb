"""Monotonic work counters, incremented by the workers and read by the API's /metrics: Prometheus turns
them into rates (`rate(swapline_chunks_embedded_total[5m])`), so no process computes a rate itself."""

from __future__ import annotations

import redis

from shared import keys


class WorkCounters:
    def __init__(self, client: redis.Redis):
        self.r = client

    def add_embedded(self, collection: str, chunks: int, seconds: float) -> None:
        """Count `chunks` embedded for `collection` in `seconds` of embedding."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(keys.embedded_chunks(), collection, chunks)
        pipe.hincrbyfloat(keys.embed_seconds(), collection, seconds)
        pipe.execute()

    def embedded(self) -> dict[str, tuple[int, float]]:
        """collection -> (chunks embedded, seconds spent embedding), since the data began."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.embedded_chunks())
        pipe.hgetall(keys.embed_seconds())
        chunks, seconds = pipe.execute()
        return {_text(name): (int(count), float(seconds.get(name, 0.0))) for name, count in chunks.items()}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
