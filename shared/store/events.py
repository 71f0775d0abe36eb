"""The event stream: job transitions, progress, publishes and swaps, as entries of one Redis Stream.

Every entry has the same fields, built by `entry()` here for Python writers and by `add_event` in
`shared/lua/lib/events.lua` for the Lua scripts (transitions, job creation, publish). Readers decode
entries and follow the stream from an id, which is also the SSE event id.
"""

from __future__ import annotations

import json
import re
from typing import cast

import redis

from shared import keys

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}\Z")


def entry(event_type: str, *, job_id: str = "", collection: str = "", kind: str = "", state: str = "",
          data: dict | None = None) -> dict:
    """The fields of one stream entry."""
    return {"type": event_type, "job_id": job_id, "collection": collection, "kind": kind, "state": state,
            "data": json.dumps(data or {})}


def decode(entry_id: str, fields: dict) -> dict:
    try:
        data = json.loads(fields.get("data") or "{}")
    except ValueError:
        data = {}
    return {"id": entry_id, "type": fields.get("type", ""), "job_id": fields.get("job_id") or None,
            "collection": fields.get("collection") or None, "kind": fields.get("kind") or None,
            "state": fields.get("state") or None, "data": data}


def older(a: str, b: str) -> bool:
    """Stream id `a` comes before `b`."""
    return tuple(map(int, a.split("-"))) < tuple(map(int, b.split("-")))


class EventLog:
    def __init__(self, client: redis.Redis, max_len: int):
        self.r = client
        self.max_len = max_len

    def append(self, event_type: str, **fields) -> str:
        """Append one event (fields as in `entry`); returns its stream id."""
        return cast(str, self.r.xadd(keys.events(), entry(event_type, **fields), maxlen=self.max_len,
                                     approximate=True))

    def append_in(self, pipe, event_type: str, **fields) -> None:
        """Queue the same append on a caller's pipeline (written with the caller's other changes)."""
        pipe.xadd(keys.events(), entry(event_type, **fields), maxlen=self.max_len, approximate=True)

    def last_id(self) -> str:
        """The id of the newest entry ("0-0" for an empty stream): follow from here for new events only."""
        newest = cast(list[tuple[str, dict]], self.r.xrevrange(keys.events(), count=1))
        return newest[0][0] if newest else "0-0"

    def oldest_id(self) -> str | None:
        oldest = cast(list[tuple[str, dict]], self.r.xrange(keys.events(), count=1))
        return oldest[0][0] if oldest else None

    def read_after(self, after: str, count: int = 100, block_ms: int | None = None) -> list[dict]:
        """Entries strictly after `after`, oldest first; waits up to `block_ms` when there are none."""
        # RESP2 reply (what connect() speaks): [[stream, [(id, fields), ...]]]
        reply = cast(list[tuple[str, list[tuple[str, dict]]]],
                     self.r.xread({keys.events(): after}, count=count, block=block_ms))
        if not reply:
            return []
        _, entries = reply[0]
        return [decode(entry_id, fields) for entry_id, fields in entries]
