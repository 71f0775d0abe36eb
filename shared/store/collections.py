"""Collections: the registry in Redis (names, document map, segment list, counters, drop markers)."""

from __future__ import annotations

import itertools
import json
import time
from typing import cast

import redis

from shared import keys
from shared.store.conn import confirm, delete_if_equals, load_script

# Documents a compaction repoints per script call: Redis runs each call alone, so no call may be long.
REPOINT_BATCH = 50_000


class CollectionStore:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._register = load_script(client, "register_segment")
        self._replace = load_script(client, "replace_segments")
        self._adopt = load_script(client, "adopt_collection")

    def create(self, name: str, default_mode: str | None = None) -> bool:
        """False when the collection already exists."""
        if not self.r.sadd(keys.collections(), name):
            return False
        fields: dict = {"created_at": time.time(), "chunks": 0, "changes": 0}
        if default_mode:
            fields["default_mode"] = default_mode
        self.r.hset(keys.collection(name), mapping=fields)
        confirm(self.r)
        self.announce(name, "created")
        return True

    def announce(self, name: str, change: str) -> None:
        """Tell every API process that the collection was created, dropped or changed (on the swap
        channel their watchers follow), so each updates what its searches know of it."""
        self.r.publish(keys.swap_channel(), json.dumps({"collection": name, "change": change}))

    def adopt(self, name: str, state: dict) -> int:
        """Register a collection found on disk in one step (`adopt_collection.lua`): `state` holds
        fields, docs, segments, segseq, fence, pointer (or None) and history (JSON strings, oldest
        first). Returns 1 when registered, 0 when the name is a collection already, -1 while a drop
        of it runs; nothing is written then."""
        payload = {**state, "pointer": state.get("pointer") or None}
        if payload["pointer"] is None:
            payload.pop("pointer")
        return int(self._adopt(
            keys=[keys.collections(), keys.collection(name), keys.collection_docs(name), keys.segments(name),
                  keys.segment_seq(name), keys.fence(name), keys.pointer(name), keys.pointer_history(name),
                  keys.dropping(name)],
            args=[name, json.dumps(payload), keys.swap_channel()]))

    def exists(self, name: str) -> bool:
        return bool(self.r.sismember(keys.collections(), name))

    def names(self) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(keys.collections())))

    def info(self, name: str) -> dict:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.collection(name))
        pipe.hlen(keys.collection_docs(name))
        meta, documents = pipe.execute()
        return {"name": name, "documents": int(documents), "chunks": int(meta.get("chunks", 0)),
                "changes": int(meta.get("changes", 0)), "created_at": float(meta.get("created_at", 0)),
                "last_rebuild_at": float(meta["last_rebuild_at"]) if meta.get("last_rebuild_at") else None,
                "default_mode": meta.get("default_mode") or None}

    def search_defaults(self, name: str) -> tuple[bool, str | None]:
        """(whether the collection exists, its default search mode or None), in one round trip: what a
        search reads before it runs."""
        pipe = self.r.pipeline(transaction=False)
        pipe.sismember(keys.collections(), name)
        pipe.hget(keys.collection(name), "default_mode")
        exists, mode = pipe.execute()
        return bool(exists), mode or None

    def search_catalog(self, names: list[str]) -> dict[str, str | None]:
        """Of `names`, those that are collections, with their default search mode (None: the service's
        default), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.sismember(keys.collections(), name)
            pipe.hget(keys.collection(name), "default_mode")
        answers = pipe.execute()
        return {name: answers[2 * i + 1] or None for i, name in enumerate(names) if answers[2 * i]}

    def set_default_mode(self, name: str, mode: str | None) -> None:
        """The mode searches of the collection use when they name none (None: the service's default)."""
        if mode:
            self.r.hset(keys.collection(name), "default_mode", mode)
        else:
            self.r.hdel(keys.collection(name), "default_mode")
        confirm(self.r)
        self.announce(name, "changed")

    def next_segment_seq(self, name: str) -> int:
        return int(self.r.incr(keys.segment_seq(name)))

    def register_segment(self, name: str, seq: int, job_id: str, doc_chunks: dict[str, int]) -> int:
        """Make a written segment live in registration order; `doc_chunks` maps each document in it
        to its chunk count, or -1 for a deleted document. Also records the segment on the job."""
        args: list = [seq]
        for doc_id, count in doc_chunks.items():
            args += [doc_id, count]
        return int(self._register(
            keys=[keys.collection_docs(name), keys.segments(name), keys.collection(name), keys.job(job_id)],
            args=args))

    def replace_segments(self, name: str, replaced: list[int], seq: int, doc_chunks: dict[str, int]) -> bool:
        """Put the merged segment `seq` where `replaced` (the list's oldest segments) were; False when
        the list no longer starts with them. The documents are repointed REPOINT_BATCH at a time, each
        batch a script call of its own after the first swapped the list (shared/lua/replace_segments.lua);
        meanwhile a document may still name a replaced segment, whose folder stays until the swap is done."""
        head: list = [seq, len(replaced), *replaced]
        items = iter(doc_chunks.items())
        while True:
            batch = list(itertools.islice(items, REPOINT_BATCH))
            args = head + [value for pair in batch for value in pair]
            if not self._replace(keys=[keys.segments(name), keys.collection_docs(name)], args=args):
                return False  # only ever the first call: later ones find `seq` at the head
            if len(batch) < REPOINT_BATCH:
                return True

    def claim_compaction(self, name: str, job_id: str) -> str | None:
        """None when `job_id` is now the collection's one compaction, else the id holding the slot."""
        if self.r.set(keys.compact_pending(name), job_id, nx=True):
            return None
        return cast(str | None, self.r.get(keys.compact_pending(name))) or ""

    def release_compaction(self, name: str, job_id: str) -> None:
        delete_if_equals(self.r, keys.compact_pending(name), job_id)

    def segments(self, name: str) -> list[int]:
        return [int(s) for s in self.r.lrange(keys.segments(name), 0, -1)]

    def doc_locations(self, name: str, doc_ids: list[str]) -> dict[str, int]:
        """Segment seq currently holding each of `doc_ids` (absent ones are left out)."""
        if not doc_ids:
            return {}
        values = cast(list[str | None], self.r.hmget(keys.collection_docs(name), doc_ids))
        return {d: int(v.split(":")[0]) for d, v in zip(doc_ids, values, strict=True) if v}

    def snapshot(self, name: str) -> tuple[list[int], int]:
        """The segment list and the change counter, read together (a rebuild's starting point)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(keys.segments(name), 0, -1)
        pipe.hget(keys.collection(name), "changes")
        segments, changes = pipe.execute()
        return [int(s) for s in segments], int(changes or 0)

    # dropping

    def claim_drop(self, name: str, job_id: str) -> str | None:
        """Mark the collection as being dropped by `job_id`; returns None when claimed, else the id of
        the drop that holds the marker."""
        if self.r.set(keys.dropping(name), job_id, nx=True):
            return None
        return cast(str | None, self.r.get(keys.dropping(name))) or ""

    def dropping_job(self, name: str) -> str | None:
        """The job named by the collection's drop marker, if any."""
        return cast(str | None, self.r.get(keys.dropping(name)))

    def release_drop(self, name: str, job_id: str) -> None:
        """Delete the drop marker if it still names `job_id`."""
        delete_if_equals(self.r, keys.dropping(name), job_id)

    def hide(self, name: str, drop_job_id: str) -> None:
        """The first step of a drop: the marker names the drop (a resumed drop may find it cleared) and
        the name leaves the set of collections, so the API answers 404 and new jobs fail."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(keys.dropping(name), drop_job_id)
        pipe.srem(keys.collections(), name)
        pipe.publish(keys.swap_channel(), json.dumps({"collection": name, "change": "dropped"}))
        pipe.execute()

    def remove(self, name: str) -> None:
        """Delete the collection's keys (the fence counter stays: see `keys.collection_keys`)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(keys.collections(), name)
        pipe.delete(*keys.collection_keys(name))
        pipe.execute()
