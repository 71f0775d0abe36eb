"""The workers' Celery app: `celery -A workers.celery_app worker -Q ingest,index,webhooks`.

Configuration is added lazily (Celery evaluates `add_defaults` callables on first use), so importing
this module reads no environment; the settings come from `shared.settings.load_settings()` once per
process, and the same `celery_config()` configures the API's sender and Flower.

Logging is Swapline's (shared/logs.py) in workers and beat alike: Celery's own setup is replaced, and
each task's log lines carry its job id, collection and the request id of the API call behind it. With
SWAPLINE_LOG_FORMAT=json the start banners are left out, so every line is a JSON object.
"""

from __future__ import annotations

import logging
import os
from functools import cache, cached_property

import redis
from celery import Celery, signals
from celery.apps.beat import Beat

from shared import logs, tasknames
from shared.celeryconfig import WEBHOOK_DISPATCH_ENTRY, celery_config, enqueue
from shared.jobs.liveness import Keepalive
from shared.names import is_job_id
from shared.services import Services, build_services
from shared.settings import Settings, load_settings
from workers.housekeeping import Housekeeping


def json_logs() -> bool:
    return settings().log_format == "json"


class SwaplineBeat(Beat):
    def run(self) -> None:
        # Beat prints its banner before logging is set up; JSON logs have no room for it.
        self.quiet = self.quiet or json_logs()
        super().run()


class SwaplineCelery(Celery):
    @cached_property
    def Beat(self):  # noqa: N802 (Celery's name)
        return self.subclass_with_self(SwaplineBeat)

    def swapline_services(self) -> Services:
        """This process's services (bootsteps reach them through `worker.app`)."""
        return services()

    def send_delivery(self, delivery_id: str) -> None:
        """Enqueue one webhook delivery attempt (by task name; the route puts it on its queue)."""
        self.send_task(tasknames.WEBHOOK_DELIVER, args=[delivery_id])


app = SwaplineCelery("swapline", include=["workers.tasks"])
app.steps["worker"].add(Housekeeping)


@cache
def settings() -> Settings:
    return load_settings()


app.add_defaults(lambda: celery_config(settings()))

_services: dict[int, Services] = {}
_keepalive: dict[int, Keepalive] = {}


def services() -> Services:
    """This process's services, built on first use after the fork (a Redis connection must not be
    shared between pool processes; the embedding model loads lazily on first embed)."""
    pid = os.getpid()
    if pid not in _services:
        _services.clear()
        s = settings()
        _services[pid] = build_services(s, lambda kind, job_id: enqueue(app, kind, job_id),
                                        torch_threads=s.worker_torch_threads, calibrates=True)
    return _services[pid]


class QuietDispatchSends(logging.Filter):
    """Beat logs every task it sends at INFO. The webhook dispatch goes every 2 s, so its lines would be
    nearly all of beat's log (one a 2 s in `make run`'s console); they are left out, the others stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("Scheduler: Sending due task") and args[:1] == (WEBHOOK_DISPATCH_ENTRY,))


@signals.setup_logging.connect
def _setup_logging(loglevel=None, **_) -> None:
    # A receiver here means Celery configures no logging of its own (worker and beat).
    logs.configure_logging(settings().log_format, loglevel or "INFO")
    beat = logging.getLogger("celery.beat")
    if not any(isinstance(f, QuietDispatchSends) for f in beat.filters):
        beat.addFilter(QuietDispatchSends())


@signals.celeryd_init.connect
def _early_logging(**_) -> None:
    # The worker warns (e.g. about running as root) before it sets logging up: catch that in the format too.
    logs.configure_logging(settings().log_format)
    lower_priority(settings().worker_nice)


def lower_priority(nice: int) -> None:
    """Run this process (and the pool processes it forks) at CPU niceness `nice`, when that is lower
    priority than what it has (raising priority back needs privileges a worker should not have)."""
    if nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, min(nice, 19))


@signals.celeryd_after_setup.connect
def _quiet_banner(sender, instance, **_) -> None:
    if json_logs():
        instance.quiet = True  # the worker prints its banner right after this signal unless quiet


_task_context: dict[str, object] = {}


@signals.task_prerun.connect
def _bind_task(task_id=None, task=None, args=None, **_) -> None:
    job_id = args[0] if args and isinstance(args[0], str) and is_job_id(args[0]) else None
    try:
        collection = services().jobs.field(job_id, "collection") if job_id else None
    except redis.RedisError:  # the task itself will meet the outage and say so
        collection = None
    _task_context[task_id] = logs.bind(job_id=job_id, collection=collection,
                                       request_id=task.request.get(logs.REQUEST_ID_HEADER))


@signals.task_postrun.connect
def _unbind_task(task_id=None, **_) -> None:
    token = _task_context.pop(task_id, None)
    if token is not None:
        logs.unbind(token)


def keepalive() -> Keepalive:
    """This process's keepalive thread (started on first use, after the fork)."""
    pid = os.getpid()
    if pid not in _keepalive:
        _keepalive.clear()
        _keepalive[pid] = Keepalive(services())
    return _keepalive[pid]
