"""Celery configuration, identical for the API (which only sends), the workers and Flower."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from shared import logs, tasknames
from shared.jobkinds import KINDS
from shared.settings import Settings

log = logging.getLogger(__name__)


class _QoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that a message it can no longer settle does not take the worker down.

    When the broker connection drops (a Redis restart, a failover), kombu 5.7 closes the channel and
    drops its connection pool; what that channel does afterwards (put the messages the worker held back
    on their queues as it closes; ack a task that was running through the outage when it ends) builds
    a pool from a connection that is gone, and the AttributeError ends the worker ("Unrecoverable
    error", tests/chaos/test_redis_disk.py test 6). Here such a message stays unacked in Redis: the
    recovery check (`shared.jobs.sweep`) sends a job whose delivery is stranded again within about a
    lease, and kombu hands any unacked message back after the visibility timeout, which does nothing
    for a job that has ended."""

    def _settle(self, what: str, tags: int, call):
        try:
            return call()
        except AttributeError as exc:
            log.warning("event=broker.unsettled action=%s messages=%s error=%r (the channel is gone with "
                        "its connection; left unacked, recovered later)", what, tags, str(exc))
            return None

    def restore_unacked(self, client=None):
        result = self._settle("restore", len(self._delivered), lambda: super(_QoS, self).restore_unacked(client))
        self._delivered.clear()
        return result

    def ack(self, delivery_tag):
        self._settle("ack", 1, lambda: super(_QoS, self).ack(delivery_tag))

    def reject(self, delivery_tag, requeue=False):
        self._settle("reject", 1, lambda: super(_QoS, self).reject(delivery_tag, requeue))


class _Channel(kombu_redis.Channel):
    QoS = _QoS


class _SentinelChannel(kombu_redis.SentinelChannel):
    QoS = _QoS


class RedisTransport(kombu_redis.Transport):
    """kombu's `redis://` transport with `_QoS`."""

    Channel = _Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's `sentinel://` transport with `_QoS`."""

    Channel = _SentinelChannel


# The broker URL's scheme picks the transport again whenever kombu switches to the next URL after a
# connection error (the Sentinels are several URLs), so Swapline's transports replace kombu's under
# kombu's own names rather than through `broker_transport`, which the first switch would drop.
TRANSPORT_ALIASES.update({"redis": f"{__name__}:RedisTransport", "sentinel": f"{__name__}:SentinelTransport"})

WEBHOOK_DISPATCH_ENTRY = "swapline-webhooks-dispatch"  # beat's entry for the webhook dispatch (every 2 s)


def celery_config(settings: Settings) -> dict:
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.visibility_timeout_seconds:
        # kombu looks for unacked messages past the timeout every interval x throttle seconds (100 s by
        # default); a timeout set shorter than the default one is looked for as often as it is short.
        transport |= {"unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 2)),
                      "unacked_restore_throttle": 1}
    broker_url = settings.redis_url
    if settings.sentinel_nodes:
        # kombu's sentinel transport asks the Sentinels for the primary on every (re)connection, so the
        # broker follows a failover like the stores do; the URL's credentials and database are the
        # primary's, the Sentinels' own password goes in sentinel_kwargs.
        url = urlsplit(settings.redis_url)
        credentials = url.netloc.rpartition("@")[0]
        at = f"{credentials}@" if credentials else ""
        broker_url = ";".join(f"sentinel://{at}{host}:{port}{url.path or '/0'}"
                              for host, port in settings.sentinel_nodes)
        transport |= {"master_name": settings.redis_sentinel_master}
        if settings.redis_sentinel_password:
            transport |= {"sentinel_kwargs": {"password": settings.redis_sentinel_password}}
    return {
        "broker_url": broker_url,
        "result_backend": broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # Job state lives in Swapline's job hashes; Celery results would only duplicate it.
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # A task is acked when it finishes, and requeued if its worker dies mid-way.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Flower shows tasks live only with events on.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in tasknames.QUEUES],
        "task_default_queue": tasknames.QUEUE_INGEST,
        "task_routes": {kind.task: {"queue": kind.queue} for kind in KINDS.values()}
        | {tasknames.SWEEP: {"queue": tasknames.QUEUE_INDEX},
           tasknames.COLLECT_VERSIONS: {"queue": tasknames.QUEUE_INDEX},
           tasknames.WEBHOOK_DISPATCH: {"queue": tasknames.QUEUE_WEBHOOKS},
           tasknames.WEBHOOK_DELIVER: {"queue": tasknames.QUEUE_WEBHOOKS}},
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Beat writes its schedule file after every task it sends: `python -m workers.health beat`
        # reads the file's age (beat answers no pings).
        "beat_sync_every": 1,
        # Every worker runs recovery, the sweep and version collection from its own housekeeping thread
        # (workers/housekeeping.py), so none of it waits behind a long rebuild and beat is optional.
        # A beat, if one runs, also sends them as tasks; locks in Redis make the duplicates harmless.
        "beat_schedule": {
            "swapline-sweep": {
                "task": tasknames.SWEEP, "schedule": settings.sweep_interval,
                "options": {"queue": tasknames.QUEUE_INDEX, "expires": settings.sweep_interval}},
            # Rebuilds collect old versions when they publish; this catches versions that stopped
            # being served later (an API process swapped away or went down).
            "swapline-collect-versions": {
                "task": tasknames.COLLECT_VERSIONS, "schedule": settings.collect_versions_seconds,
                "options": {"queue": tasknames.QUEUE_INDEX, "expires": settings.collect_versions_seconds}},
            # Follows the event stream from its cursor and enqueues webhook deliveries
            # (shared/webhooks/delivery.py says why no event is lost).
            WEBHOOK_DISPATCH_ENTRY: {
                "task": tasknames.WEBHOOK_DISPATCH, "schedule": settings.webhook_dispatch_seconds,
                "options": {"queue": tasknames.QUEUE_WEBHOOKS, "expires": settings.webhook_dispatch_seconds}},
        },
    }


def make_celery(settings: Settings, main: str = "swapline") -> Celery:
    app = Celery(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def enqueue(celery: Celery, kind: str, job_id: str) -> None:
    """Send the task for a job of `kind` by name; the message carries only the job id (and, in a
    header, the id of the API request that asked for it, so the worker's log lines carry it too)."""
    spec = KINDS[kind]
    request_id = logs.current("request_id")
    headers = {logs.REQUEST_ID_HEADER: request_id} if request_id else None
    celery.send_task(spec.task, args=[job_id], queue=spec.queue, headers=headers)
