"""Reading jobs back: the listing (newest first, with cursors that neither skip nor repeat), the
retention that bounds history, and the recent and per-collection views status pages use."""

from __future__ import annotations

import time
from typing import cast

import redis

from shared import cursors, keys
from shared.jobstates import TERMINAL, public
from shared.names import is_job_id
from shared.store.jobs import job_hashes

LIST_BATCH = 100
LIST_SCAN_MAX = 1000
CLEANUP_BATCH = 500


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, job id) from a cursor; ValueError when it is not one of ours."""
    score, job_id = cursors.decode(cursor, float, str)
    if not is_job_id(job_id):
        raise ValueError("not a valid cursor")
    return score, job_id


class JobHistory:
    def __init__(self, client: redis.Redis):
        self.r = client

    def newest_ids(self, collection: str | None = None, count: int = 20) -> list[str]:
        index = keys.collection_jobs(collection) if collection else keys.jobs()
        return cast(list[str], self.r.zrevrange(index, 0, count - 1))

    def newest(self, collection: str | None = None, count: int = 20) -> list[dict]:
        """The raw fields of the newest `count` jobs (of one collection), newest first."""
        return [raw for raw in job_hashes(self.r, self.newest_ids(collection, count)) if raw]

    def recent(self, count: int = 15) -> list[dict]:
        """The newest jobs as the API shows them."""
        return [public(raw) for raw in self.newest(None, count)]

    def last_of_kind(self, collection: str, kind: str, scan: int = 50) -> dict | None:
        for raw in self.newest(collection, scan):
            if raw.get("kind") == kind:
                return public(raw)
        return None

    def of_collection(self, collection: str, states: tuple[str, ...]) -> list[tuple[str, str, str]]:
        """(id, kind, state) of every job of the collection in one of `states`."""
        ids = cast(list[str], self.r.zrange(keys.collection_jobs(collection), 0, -1))
        return [(raw["id"], raw.get("kind", ""), raw["state"]) for raw in job_hashes(self.r, ids)
                if raw and raw.get("state") in states]

    def count_by_kind_state(self, scan: int) -> dict[tuple[str, str], int]:
        """Jobs among the newest `scan` by (kind, state) (metrics)."""
        ids = cast(list[str], self.r.zrevrange(keys.jobs(), 0, scan - 1))
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "kind", "state")
        counts: dict[tuple[str, str], int] = {}
        for kind, state in pipe.execute() if ids else []:
            if kind and state:
                counts[(kind, state)] = counts.get((kind, state), 0) + 1
        return counts

    def list(self, collection: str | None = None, state: str | None = None, kind: str | None = None,
             limit: int = 20, cursor: str | None = None,
             collections: frozenset[str] | None = None) -> tuple[list[dict], str | None]:
        """Jobs newest first, optionally filtered (`collections`: only jobs of these); returns (page,
        next cursor or None).

        The cursor names the last job looked at (its created_at and id), so pages neither skip nor
        repeat jobs when new ones arrive. A page may hold fewer than `limit` jobs when filters leave
        few matches among the next LIST_SCAN_MAX jobs; the cursor then continues from there."""
        index = keys.collection_jobs(collection) if collection else keys.jobs()
        after = decode_cursor(cursor) if cursor else None
        page: list[dict] = []
        scanned = 0
        last: tuple[float, str] | None = None
        max_score: float | str = after[0] if after else "+inf"
        exhausted = False
        while len(page) < limit and scanned < LIST_SCAN_MAX:
            batch = cast(list[tuple[str, float]],
                         self.r.zrevrangebyscore(index, max_score, "-inf", start=0, num=LIST_BATCH, withscores=True))
            if after:
                # Same created_at as the cursor: the ones at or above its id were on earlier pages
                # (members of equal score come in reverse id order).
                batch = [(m, sc) for m, sc in batch if not (sc == after[0] and m >= after[1])]
            if not batch:
                exhausted = True
                break
            for (member, score), data in zip(batch, job_hashes(self.r, [m for m, _ in batch]), strict=True):
                scanned += 1
                last = (score, member)
                if data and (state is None or data.get("state") == state) \
                        and (kind is None or data.get("kind") == kind) \
                        and (collections is None or data.get("collection") in collections):
                    page.append(public(data))
                    if len(page) == limit:
                        break
            assert last is not None  # the batch was not empty, so the loop above ran
            max_score, after = last[0], last
        if exhausted or last is None:
            return page, None
        # Only look one job further when the page ended exactly at the end of the index.
        rest = cast(list[tuple[str, float]],
                    self.r.zrevrangebyscore(index, last[0], "-inf", start=0, num=LIST_BATCH, withscores=True))
        if not any(not (sc == last[0] and m >= last[1]) for m, sc in rest):
            return page, None
        return page, cursors.encode(*last)

    def cleanup(self, ttl_seconds: float, keep_per_collection: int, now: float | None = None) -> int:
        """Delete finished jobs older than `ttl_seconds`, except the newest `keep_per_collection` of
        each collection. Queued and running jobs are never deleted. Returns how many were deleted."""
        cutoff = (now if now is not None else time.time()) - ttl_seconds
        deleted = 0
        start = 0
        while True:
            # Oldest first; created before the cutoff is necessary (finished is never before created).
            ids = cast(list[str], self.r.zrangebyscore(keys.jobs(), "-inf", cutoff, start=start, num=CLEANUP_BATCH))
            if not ids:
                return deleted
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "state", "collection", "finished_at", "created_at")
            doomed = []
            for job_id, (state, collection, finished_at, created_at) in zip(ids, pipe.execute(), strict=True):
                if state is None:
                    doomed.append((job_id, collection))  # the hash is gone: drop the index entry
                    continue
                if state not in TERMINAL or float(finished_at or created_at or 0) > cutoff:
                    continue
                rank = cast(int | None, self.r.zrevrank(keys.collection_jobs(collection), job_id))
                if rank is not None and rank < keep_per_collection:
                    continue
                doomed.append((job_id, collection))
            if doomed:
                pipe = self.r.pipeline(transaction=True)
                for job_id, collection in doomed:
                    pipe.delete(keys.job(job_id))
                    pipe.zrem(keys.jobs(), job_id)
                    if collection:
                        pipe.zrem(keys.collection_jobs(collection), job_id)
                pipe.execute()
                deleted += len(doomed)
            # Deleted entries left the index, so the next batch starts after the kept ones only.
            start += len(ids) - len(doomed)
