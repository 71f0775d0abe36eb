"""The live event stream (GET /v1/events, server-sent events) as an iterator of `Event`s.

requests-sse reads the stream and reconnects when it ends (the server closes each stream after
SWAPLINE_SSE_MAX_SECONDS) with `Last-Event-ID`, so an iteration misses no event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import requests
from requests_sse import EventSource, InvalidContentTypeError, InvalidStatusCodeError

from shared import eventnames as names
from webapp.client.errors import ApiUnreachable

GAP = names.GAP


@dataclass(frozen=True)
class Event:
    """One event: `id` (resume after it with `last_event_id`), `type` (`job.started`, `job.progress`,
    `job.succeeded`, `index.published`, ..., or `gap` when the server trimmed events the client had
    not read), and `data`, the event's JSON (job_id, collection, kind, state, data, ...)."""

    id: str
    type: str
    data: dict


def iterate(session: requests.Session, url: str, params: dict, last_event_id: str | None, read_timeout: float,
            error_from) -> Iterator[Event]:
    try:
        with EventSource(url, session=session, params=params, latest_event_id=last_event_id,
                         timeout=read_timeout, max_connect_retry=0) as source:
            for message in source:
                data = json.loads(message.data) if message.data else {}
                yield Event(message.last_event_id, message.type or "message", data)
    except InvalidStatusCodeError as exc:
        raise error_from(exc.response) from None
    except InvalidContentTypeError as exc:
        raise ApiUnreachable(f"{url} did not answer an event stream: {exc}") from None
    except requests.RequestException as exc:
        raise ApiUnreachable(f"the event stream at {url} failed: {exc}") from exc
