"""Sources: the folders collections follow, what the collection holds of each file, the one reconcile
of a source at a time, and the watch lease that keeps one watcher per source."""

from __future__ import annotations

import json
import time
import uuid
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from shared import keys
from shared.store.conn import confirm, delete_if_equals

LIST_FIELDS = ("include", "exclude")


def _typed(raw: dict) -> dict:
    out = dict(raw)
    for name in LIST_FIELDS:
        out[name] = json.loads(out.get(name) or "[]")
    out["watch"] = out.get("watch") == "1"
    out["created_at"] = float(out.get("created_at") or 0)
    out["last_reconcile"] = json.loads(out["last_reconcile"]) if out.get("last_reconcile") else None
    out["prefix"] = out.get("prefix", "")
    out["git_commit"] = out.get("git_commit") or None
    return out


class FileState:
    """What the collection holds of one file: its size and mtime when read, and its content hash."""

    __slots__ = ("size", "mtime_ns", "digest")

    def __init__(self, size: int, mtime_ns: int, digest: str):
        self.size, self.mtime_ns, self.digest = size, mtime_ns, digest

    def encode(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.digest}"

    @classmethod
    def decode(cls, raw: str) -> FileState:
        size, mtime_ns, digest = raw.split(":", 2)
        return cls(int(size), int(mtime_ns), digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, FileState) and self.encode() == other.encode()

    def __repr__(self) -> str:
        return f"FileState({self.encode()})"


# A source's collection and folder, and what the collection holds of some of its paths (None: nothing).
HeldStates = tuple[str | None, str | None, list[FileState | None]]


class SourceStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    # records

    def create(self, collection: str, path: str, include: list[str], exclude: list[str], watch: bool,
               prefix: str = "") -> dict:
        source_id = uuid.uuid4().hex
        record: dict[FieldT, EncodableT] = {
            "id": source_id, "collection": collection, "path": path, "include": json.dumps(include),
            "exclude": json.dumps(exclude), "watch": "1" if watch else "0", "prefix": prefix,
            "created_at": time.time()}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.source(source_id), mapping=record)
        pipe.sadd(keys.collection_sources(collection), source_id)
        pipe.hset(keys.sources(), source_id, collection)
        pipe.execute()
        confirm(self.r)
        source = self.get(source_id)
        assert source is not None  # just written under a fresh id no one else knows yet
        return source

    def adopt(self, record: dict) -> dict:
        """Re-create a source from the record kept in the data dir (recover, restore), under its id;
        its file state starts empty."""
        source_id, collection = record["id"], record["collection"]
        fields: dict[FieldT, EncodableT] = {
            "id": source_id, "collection": collection, "path": str(record["path"]),
            "include": json.dumps(list(record.get("include") or [])),
            "exclude": json.dumps(list(record.get("exclude") or [])), "watch": "1" if record.get("watch") else "0",
            "prefix": str(record.get("prefix") or ""), "created_at": float(record.get("created_at") or time.time())}
        if record.get("git_commit"):
            fields["git_commit"] = str(record["git_commit"])
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.source(source_id), keys.source_files(source_id), keys.source_recheck(source_id))
        pipe.hset(keys.source(source_id), mapping=fields)
        pipe.sadd(keys.collection_sources(collection), source_id)
        pipe.hset(keys.sources(), source_id, collection)
        pipe.execute()
        source = self.get(source_id)
        assert source is not None
        return source

    def get(self, source_id: str) -> dict | None:
        raw = self.r.hgetall(keys.source(source_id))
        return _typed(raw) if raw else None

    def of_collection(self, collection: str) -> list[dict]:
        ids = sorted(cast(set[str], self.r.smembers(keys.collection_sources(collection))))
        return [s for s in (self.get(i) for i in ids) if s]

    def all(self) -> list[dict]:
        """Every source of every collection (the watcher's list)."""
        ids = sorted(cast(list[str], self.r.hkeys(keys.sources())))
        return [s for s in (self.get(i) for i in ids) if s]

    def set_last_reconcile(self, source_id: str, summary: dict) -> None:
        if self.r.exists(keys.source(source_id)):
            self.r.hset(keys.source(source_id), "last_reconcile", json.dumps(summary))

    def set_watch(self, source_id: str, watch: bool) -> None:
        self.r.hset(keys.source(source_id), "watch", "1" if watch else "0")

    def remove(self, source_id: str) -> None:
        """Forget the source: its record, its file state, its lease and its reconcile slot."""
        collection = cast(str | None, self.r.hget(keys.sources(), source_id))
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.source(source_id), keys.source_files(source_id), keys.source_reconcile(source_id),
                    keys.watch_lease(source_id), keys.source_recheck(source_id))
        pipe.hdel(keys.sources(), source_id)
        if collection:
            pipe.srem(keys.collection_sources(collection), source_id)
        pipe.execute()

    def remove_collection(self, collection: str) -> None:
        """Forget every source of a collection (it is being dropped)."""
        for source_id in cast(set[str], self.r.smembers(keys.collection_sources(collection))):
            self.remove(source_id)

    # what the collection holds of each file

    def files(self, source_id: str) -> dict[str, FileState]:
        raws = cast(dict[str, str], self.r.hgetall(keys.source_files(source_id)))
        return {path: FileState.decode(raw) for path, raw in raws.items()}

    def file_states(self, source_id: str, paths: list[str]) -> dict[str, FileState]:
        """What is held of each of `paths` (those held), without reading the whole hash."""
        if not paths:
            return {}
        raws = cast(list[str | None], self.r.hmget(keys.source_files(source_id), paths))
        return {path: FileState.decode(raw) for path, raw in zip(paths, raws, strict=True) if raw}

    def held_states(self, wanted: dict[str, list[str]]) -> dict[str, HeldStates]:
        """For each source id in `wanted`: (its collection, its folder, what the collection holds of each
        of its listed paths, None where it holds none), in one round trip."""
        ids = list(wanted)
        pipe = self.r.pipeline(transaction=False)
        for source_id in ids:
            pipe.hmget(keys.source(source_id), ["collection", "path"])
            pipe.hmget(keys.source_files(source_id), wanted[source_id])
        raw = pipe.execute()
        out = {}
        for i, source_id in enumerate(ids):
            collection, folder = raw[2 * i]
            states = [FileState.decode(v) if v else None for v in raw[2 * i + 1]]
            out[source_id] = (collection, folder, states)
        return out

    def file_count(self, source_id: str) -> int:
        return int(self.r.hlen(keys.source_files(source_id)))

    def record_files(self, source_id: str, held: dict[str, FileState], gone: list[str]) -> None:
        """After a segment holding `held` (and tombstoning `gone`) was registered. A source removed
        meanwhile stays removed."""
        if not self.r.exists(keys.source(source_id)):
            return
        pipe = self.r.pipeline(transaction=True)
        if held:
            pipe.hset(keys.source_files(source_id), mapping={p: s.encode() for p, s in held.items()})
        if gone:
            pipe.hdel(keys.source_files(source_id), *gone)
        pipe.execute()

    # a git source: the commit it was last reconciled at, and what its next reconcile checks besides

    def recheck(self, source_id: str) -> set[str]:
        return cast(set[str], self.r.smembers(keys.source_recheck(source_id)))

    def set_git_state(self, source_id: str, commit: str, ignores: str, recheck: list[str], rules: str = "") -> None:
        """After a reconcile of a git source ended with every file in: the next one diffs from `commit`
        (if the rules' fingerprint is still `rules`)."""
        if not self.r.exists(keys.source(source_id)):
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.source_recheck(source_id))
        if recheck:
            pipe.sadd(keys.source_recheck(source_id), *recheck)
        pipe.hset(keys.source(source_id), mapping={"git_commit": commit, "git_ignores": ignores, "git_rules": rules})
        pipe.execute()

    def clear_git_state(self, source_id: str) -> None:
        """Forget the indexed commit: the next reconcile walks the tree."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(keys.source(source_id), "git_commit", "git_ignores", "git_rules")
        pipe.delete(keys.source_recheck(source_id))
        pipe.execute()

    def add_recheck(self, source_id: str, paths: list[str], bound: int) -> None:
        """Paths a watcher's reconcile read: a git reconcile must look at them again even if git calls
        them unchanged (an edit read, then reverted). Past `bound` the commit is forgotten instead."""
        if not paths or not self.r.hexists(keys.source(source_id), "git_commit"):
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(keys.source_recheck(source_id), *paths)
        pipe.scard(keys.source_recheck(source_id))
        if pipe.execute()[1] > bound:
            self.clear_git_state(source_id)

    # the one reconcile of a source

    def claim_reconcile(self, source_id: str, job_id: str) -> str | None:
        """None when `job_id` now holds the source's reconcile slot, else the id of the holder."""
        if self.r.set(keys.source_reconcile(source_id), job_id, nx=True):
            return None
        return cast(str | None, self.r.get(keys.source_reconcile(source_id))) or ""

    def reconcile_holder(self, source_id: str) -> str | None:
        return cast(str | None, self.r.get(keys.source_reconcile(source_id)))

    def take_reconcile(self, source_id: str, job_id: str, stale: str) -> bool:
        """Replace a slot left by a finished job (`stale`) with `job_id`."""
        if delete_if_equals(self.r, keys.source_reconcile(source_id), stale):
            return self.claim_reconcile(source_id, job_id) is None
        return False

    def release_reconcile(self, source_id: str, job_id: str) -> None:
        delete_if_equals(self.r, keys.source_reconcile(source_id), job_id)

    # the watch lease

    def acquire_watch(self, source_id: str, token: str, ttl_seconds: int) -> bool:
        """Take or renew the source's watch lease for `token`; False while another watcher holds it."""
        key = keys.watch_lease(source_id)
        if self.r.set(key, token, nx=True, ex=max(1, int(ttl_seconds))):
            return True
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != token:
                    return False
                pipe.multi()
                pipe.expire(key, max(1, int(ttl_seconds)))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def release_watch(self, source_id: str, token: str) -> None:
        delete_if_equals(self.r, keys.watch_lease(source_id), token)

    def watch_holder(self, source_id: str) -> str | None:
        return cast(str | None, self.r.get(keys.watch_lease(source_id)))
