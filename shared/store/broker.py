"""A view of Celery's broker as kombu's Redis transport lays it out (queue lists, the unacked hash and
its index; keys in `shared.keys`). Swapline only reads it, and forgets an unacked delivery before the
sweeper sends its job again."""

from __future__ import annotations

import base64
import json

import redis

from shared import keys
from shared.names import JOB_ID_IN_TEXT
from shared.tasknames import QUEUES


def message_job_ids(message: dict) -> set[str]:
    """Job ids a Celery message (protocol 2) carries: its args are [job_id]."""
    headers = message.get("headers") or {}
    found = set(JOB_ID_IN_TEXT.findall(str(headers.get("argsrepr") or "")))
    if not found and message.get("body"):
        try:
            args = json.loads(base64.b64decode(message["body"]))[0]
            found = {a for a in args if isinstance(a, str) and JOB_ID_IN_TEXT.fullmatch(a)}
        except (ValueError, TypeError, IndexError, KeyError):
            pass
    return found


class BrokerView:
    def __init__(self, client: redis.Redis):
        self.r = client

    def snapshot(self) -> tuple[set[str], dict[str, list[tuple[str, float]]]]:
        """(job ids with a message waiting in a queue list, job id -> [(delivery tag, delivered at)] of
        messages delivered to a worker and not acked), read in one transaction."""
        lists = [name for queue in QUEUES for name in keys.broker_queue_lists(queue)]
        pipe = self.r.pipeline(transaction=True)
        for name in lists:
            pipe.lrange(name, 0, -1)
        pipe.hgetall(keys.broker_unacked())
        pipe.zrange(keys.broker_unacked_index(), 0, -1, withscores=True)
        *queued_lists, unacked, index = pipe.execute()
        waiting: set[str] = set()
        for items in queued_lists:
            for item in items:
                try:
                    waiting |= message_job_ids(json.loads(item))
                except ValueError:
                    continue
        delivered_at = dict(index)
        taken: dict[str, list[tuple[str, float]]] = {}
        for tag, payload in unacked.items():
            try:
                message = json.loads(payload)[0]
            except (ValueError, IndexError, TypeError):
                continue
            for job_id in message_job_ids(message):
                taken.setdefault(job_id, []).append((tag, float(delivered_at.get(tag, 0))))
        return waiting, taken

    def forget_deliveries(self, tags: list[str]) -> None:
        """Remove unacked deliveries so kombu never restores them (their job is being sent again)."""
        if not tags:
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(keys.broker_unacked(), *tags)
        pipe.zrem(keys.broker_unacked_index(), *tags)
        pipe.execute()

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue's broker list."""
        return int(self.r.llen(keys.celery_queue(queue)))
