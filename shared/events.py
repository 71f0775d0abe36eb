"""The event stream: job transitions, progress, publishes and swaps, as entries of one Redis Stream.

Writers append with XADD (most of them inside the job and publish Lua scripts); readers here decode
entries and follow the stream from an id, which is also the SSE event id.
"""

from __future__ import annotations

import json
import re

import redis

from shared import keys

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def decode(entry_id: str, fields: dict) -> dict:
    try:
        data = json.loads(fields.get("data") or "{}")
    except ValueError:
        data = {}
    return {"id": entry_id, "type": fields.get("type", ""), "job_id": fields.get("job_id") or None,
            "collection": fields.get("collection") or None, "kind": fields.get("kind") or None,
            "state": fields.get("state") or None, "data": data}


class EventLog:
    def __init__(self, client: redis.Redis):
        self.r = client

    def append(self, event_type: str, collection: str, data: dict, max_len: int, job_id: str = "") -> str:
        return self.r.xadd(keys.events(), {"type": event_type, "job_id": job_id, "collection": collection,
                                           "kind": "", "state": "", "data": json.dumps(data)},
                           maxlen=max_len, approximate=True)

    def last_id(self) -> str:
        """The id of the newest entry ("0-0" for an empty stream): follow from here for new events only."""
        newest = self.r.xrevrange(keys.events(), count=1)
        return newest[0][0] if newest else "0-0"

    def oldest_id(self) -> str | None:
        oldest = self.r.xrange(keys.events(), count=1)
        return oldest[0][0] if oldest else None

    def read_after(self, after: str, count: int = 100, block_ms: int | None = None) -> list[dict]:
        """Entries strictly after `after`, oldest first; waits up to `block_ms` when there are none."""
        reply = self.r.xread({keys.events(): after}, count=count, block=block_ms)
        if not reply:
            return []
        _, entries = reply[0]
        return [decode(entry_id, fields) for entry_id, fields in entries]

    def recent(self, count: int = 50, collection: str | None = None) -> list[dict]:
        """The newest events, newest first (scans at most 20x `count` entries when filtering)."""
        entries = self.r.xrevrange(keys.events(), count=count if collection is None else count * 20)
        out = [decode(i, f) for i, f in entries]
        if collection is not None:
            out = [e for e in out if e["collection"] == collection]
        return out[:count]
