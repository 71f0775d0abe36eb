"""`Client`: Swapline's REST API as Python calls.

A good HTTP citizen: connection errors, 502/503/504 and 429 are retried with exponential backoff,
waiting what `Retry-After` says when the server says it (urllib3's `Retry`, mounted on the requests
session). Every job-creating POST carries an `Idempotency-Key`, the same on each retry, so a retry of
a request whose answer was lost replays the first answer instead of creating a second job."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.jobstates import SUCCEEDED, TERMINAL
from shared.names import COLLECTION_NAME_RULE, is_collection_name, is_job_id, is_snapshot_id
from webapp.client import events
from webapp.client.errors import (
    ApiError,
    ApiUnreachable,
    Interrupted,
    InvalidArgument,
    JobFailed,
    NotServed,
    RebuildBusy,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RETRIES = 4
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Waits between tries: 0, 0.5, 1, 2 s... (doubling, capped); a Retry-After header wins over these.
BACKOFF_FACTOR = 0.25
BACKOFF_MAX = 10.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


DOT_SEGMENTS = frozenset({".", ".."})


def segment(value: object) -> str:
    """`value` as one URL path segment: every reserved character percent-encoded (`/`, `?`, `#`, `%`
    included), so it can neither end the path nor add segments. A value that is, or decodes to, `.` or
    `..` is refused: requests decodes `%2E` and urllib3 then removes dot segments, which would send the
    request to another route."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{value!r} is not a non-empty string")
    decoded, previous = value, None
    while decoded != previous:
        previous, decoded = decoded, unquote(decoded)
    if value in DOT_SEGMENTS or decoded in DOT_SEGMENTS:
        raise InvalidArgument(f"{value!r} cannot be a URL path segment")
    return quote(value, safe="")


def collection_segment(name: object) -> str:
    """A collection name checked against the server's own pattern (shared.names), then encoded."""
    if not is_collection_name(name):
        raise InvalidArgument(f"{name!r} is not a collection name ({COLLECTION_NAME_RULE})")
    return segment(name)


def id_segment(value: object, what: str = "job id") -> str:
    """A job or source id: 32 lowercase hex digits, as the server issues them."""
    if not is_job_id(value):
        raise InvalidArgument(f"{value!r} is not a {what} (32 lowercase hex digits)")
    return segment(value)


def collection_path(name: object) -> str:
    """`/v1/collections/<name>`, the name checked and encoded: every collection route starts here."""
    return f"/v1/collections/{collection_segment(name)}"


def document_segment(doc_id: object) -> str:
    """A document id as one segment: a `/` in it (ids are often paths, `docs/intro.md`) is sent as %2F,
    which the server's `<path:doc_id>` route reads back as `/`. An id with a `.` or `..` part is refused:
    a proxy that decodes %2F before normalising the path would otherwise collapse it."""
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgument(f"{doc_id!r} is not a document id")
    for part in unquote(doc_id).split("/"):
        if part in DOT_SEGMENTS:
            raise InvalidArgument(f"document id {doc_id!r} has a {part!r} path segment; it cannot be sent in a URL")
    # The server's router merges `//` and its path converter cannot start with `/`: such an id would
    # arrive as another id.
    if doc_id.startswith("/") or "//" in doc_id:
        raise InvalidArgument(f"document id {doc_id!r} starts with / or has //; the API's document route cannot "
                              "carry it")
    return segment(doc_id)


def retry_policy(retries: int) -> Retry:
    """Retry every method: searches are reads, and job-creating POSTs carry an Idempotency-Key."""
    return Retry(total=retries, connect=retries, read=retries, status=retries, other=0, redirect=0,
                 allowed_methods=None, status_forcelist=RETRY_STATUSES, backoff_factor=BACKOFF_FACTOR,
                 backoff_max=BACKOFF_MAX, respect_retry_after_header=True, raise_on_status=False)


class Client:
    """A client of one Swapline API.

    `base_url` is where it answers, `api_key` is sent as `Authorization: Bearer`, `timeout` bounds
    each HTTP answer (seconds), `retries` is how many times a failed request is tried again."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = DEFAULT_RETRIES, user_agent: str = "swapline-client"):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.http = self._session(retry_policy(retries), api_key, user_agent)
        # Readiness probes are polls themselves: one try each.
        self._probe = self._session(Retry(0, read=False), api_key, user_agent)

    @staticmethod
    def _session(retry: Retry, api_key: str | None, user_agent: str) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = user_agent
        if api_key:
            session.headers["Authorization"] = f"Bearer {api_key}"
        return session

    def close(self) -> None:
        self.http.close()
        self._probe.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200,), session: requests.Session | None = None,
                **kw: Any) -> requests.Response:
        """One API call (with retries); ApiError unless the final status is in `ok`."""
        url = f"{self.base_url}{path}"
        try:
            resp = (session or self.http).request(method, url, timeout=self.timeout, **kw)
        except requests.ConnectionError as exc:
            raise ApiUnreachable(
                f"cannot reach the Swapline API at {self.base_url} ({_reason(exc)}; tried {self.retries + 1} "
                "times); is it running? Start it with `make run` or point SWAPLINE_URL at it") from exc
        except requests.Timeout as exc:
            raise ApiUnreachable(
                f"the Swapline API at {self.base_url} did not answer within {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise ApiUnreachable(f"request to {url} failed: {exc}") from exc
        if resp.status_code not in ok:
            raise error_from(resp)
        return resp

    def _create(self, method: str, path: str, idempotency_key: str | None, **kw: Any) -> dict:
        """A job-creating request (202 and the job); the key, a new one unless given, is sent on every
        try of this call."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key or uuid.uuid4().hex}
        return self.request(method, path, ok=(202,), headers=headers, **kw).json()

    # health

    def ready(self) -> bool:
        """/readyz: Redis answers and the index watcher has synced (and warmed the model)."""
        return self._probe_ok("/readyz")

    def alive(self) -> bool:
        """/healthz: the process serves HTTP (it takes jobs before it is ready to search)."""
        return self._probe_ok("/healthz")

    def _probe_ok(self, path: str) -> bool:
        try:
            return self.request("GET", path, session=self._probe).status_code == 200
        except (ApiUnreachable, ApiError):
            return False

    # collections and documents

    def create_collection(self, name: str) -> bool:
        """Create collection `name`: True when created, False when it already existed."""
        collection_segment(name)  # refused here, as by every call that puts it in a URL
        resp = self.request("POST", "/v1/collections", ok=(201, 409), json={"name": name})
        return resp.status_code == 201

    def collection(self, name: str) -> dict:
        """Counts, the index version served, the running job and more (GET /v1/collections/{name})."""
        return self.request("GET", collection_path(name)).json()

    def add_documents(self, name: str, documents: list[dict], rebuild: bool = True,
                      idempotency_key: str | None = None) -> dict:
        """Add or replace documents (`{"id", "text", "metadata"?}` each); returns the queued ingest job.
        With `rebuild` the ingest asks for a rebuild once done, so they become searchable."""
        return self._create("POST", f"{collection_path(name)}/documents", idempotency_key,
                            json={"documents": documents, "rebuild": rebuild})

    def delete_document(self, name: str, doc_id: str, idempotency_key: str | None = None) -> dict:
        """Queue the deletion of one document; returns the delete job."""
        path = f"{collection_path(name)}/documents/{document_segment(doc_id)}"
        return self._create("DELETE", path, idempotency_key)

    def drop_collection(self, name: str, idempotency_key: str | None = None) -> dict:
        """Queue the drop of a whole collection; returns the drop job."""
        return self._create("DELETE", collection_path(name), idempotency_key)

    def rebuild(self, name: str, idempotency_key: str | None = None, force: bool = False) -> dict:
        """Queue a rebuild of the index; RebuildBusy (with its job_id) when one is queued or running.
        With `force` the new version is published even when the quality gate refuses it (canaries, or
        less than half the documents left)."""
        params = {"force": "true"} if force else None
        return self._create("POST", f"{collection_path(name)}/rebuild", idempotency_key, params=params)

    # quality: canaries gating each publish, evaluation, the default search mode

    def canaries(self, name: str) -> dict:
        """The collection's canaries and max_drop (ApiError 404 `canaries_not_found` when none)."""
        return self.request("GET", f"{collection_path(name)}/canaries").json()

    def set_canaries(self, name: str, canaries: list[dict], max_drop: int = 0) -> dict:
        """Set the canaries (`{"query", "expect", "k"?, "mode"?}` each) every rebuild must keep finding."""
        return self.request("PUT", f"{collection_path(name)}/canaries",
                            json={"canaries": canaries, "max_drop": max_drop}).json()

    def clear_canaries(self, name: str) -> None:
        self.request("DELETE", f"{collection_path(name)}/canaries", ok=(204,))

    def evaluate(self, name: str, queries: list[dict], k: int = 10, idempotency_key: str | None = None) -> dict:
        """Queue an `eval` job of labelled queries (`{"query", "expect": [ids or prefixes]}`) on the
        published version; its result holds hits@k, MRR and nDCG@10 per search mode."""
        return self._create("POST", f"{collection_path(name)}/eval", idempotency_key,
                            json={"queries": queries, "k": k})

    def set_default_mode(self, name: str, mode: str | None) -> dict:
        """The mode searches of the collection use when they name none (None: the service's default)."""
        return self.request("PATCH", collection_path(name), json={"default_mode": mode}).json()

    def collections(self, limit: int = 100, cursor: str | None = None) -> dict:
        """A page of collections by name, with counts and the version served (`next_cursor` pages on)."""
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self.request("GET", "/v1/collections", params=params).json()

    def documents(self, name: str, prefix: str = "", limit: int = 100, cursor: str | None = None,
                  version: int | None = None) -> dict:
        """A page of the documents in the served version of `name` (or in the kept `version`), by id,
        optionally under `prefix`. A `cursor` continues on the version its listing started on."""
        params = {"prefix": prefix, "limit": limit, **({"cursor": cursor} if cursor else {}),
                  **({"version": version} if version is not None else {})}
        return self.request("GET", f"{collection_path(name)}/documents", params=params).json()

    def document(self, name: str, doc_id: str, version: int | None = None) -> dict:
        """One document as stored in the served version (or in the kept `version`): metadata and chunks."""
        path = f"{collection_path(name)}/documents/{document_segment(doc_id)}"
        return self.request("GET", path, params={"version": version} if version is not None else None).json()

    def search(self, name: str, query: str, k: int = 10, mode: str | None = None,
               filter: dict | None = None, version: int | None = None, group_by: str | None = None,
               max_tokens: int | None = None) -> dict:
        """The `k` best hits for `query`, and the index version that answered. `mode` is vector,
        keyword or hybrid (the API's default); `filter` narrows the chunks searched (see the README);
        `version` searches that kept version instead of the served one (ApiError 404 when not kept);
        `group_by="document"` answers one result per document with merged passages; `max_tokens` cuts
        the answer's texts to that many model tokens."""
        body: dict[str, Any] = {"query": query, "k": k}
        if version is not None:
            body["version"] = version
        if mode:
            body["mode"] = mode
        if filter:
            body["filter"] = filter
        if group_by:
            body["group_by"] = group_by
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self.request("POST", f"{collection_path(name)}/search", json=body).json()

    # sources: folders a collection follows (SWAPLINE_SOURCE_ROOTS on the server)

    def add_source(self, name: str, path: str, watch: bool = False, include: list[str] | None = None,
                   exclude: list[str] | None = None, prefix: str = "", idempotency_key: str | None = None) -> dict:
        """Follow folder `path` (on the server) into collection `name`; returns {"source", "job"}: the
        source and its first reconcile job. With `watch`, changes are picked up by themselves."""
        body = {"path": path, "watch": watch, "include": include or [], "exclude": exclude or [], "prefix": prefix}
        return self._create("POST", f"{collection_path(name)}/sources", idempotency_key, json=body)

    def sources(self, name: str) -> list[dict]:
        """The sources of collection `name`, each with its last reconcile."""
        return self.request("GET", f"{collection_path(name)}/sources").json()["sources"]

    def source(self, name: str, source_id: str) -> dict:
        return self.request("GET", self._source_path(name, source_id)).json()

    def reconcile(self, name: str, source_id: str, idempotency_key: str | None = None) -> dict:
        """Compare the folder with the collection now; returns the reconcile job. RebuildBusy (with the
        running job's id) when one is queued or running."""
        return self._create("POST", f"{self._source_path(name, source_id)}/reconcile", idempotency_key)

    def reconcile_plan(self, name: str, source_id: str) -> dict:
        """What a reconcile would do now (a dry run: nothing changes, no job): the `plan` with files
        added, changed, removed and skipped, chunks to embed and cached, and `eta_seconds`. ApiError 409
        (`dry_run_too_costly`) past the server's bound."""
        path = f"{self._source_path(name, source_id)}/reconcile"
        return self.request("POST", path, json={"dry_run": True}).json()["plan"]

    def remove_source(self, name: str, source_id: str, idempotency_key: str | None = None) -> dict:
        """Stop following the folder and remove its documents; returns the job."""
        return self._create("DELETE", self._source_path(name, source_id), idempotency_key)

    @staticmethod
    def _source_path(name: str, source_id: str) -> str:
        return f"{collection_path(name)}/sources/{id_segment(source_id, 'source id')}"

    # snapshots and recovery

    def snapshot(self, name: str, idempotency_key: str | None = None) -> dict:
        """Take a snapshot of collection `name` (admin); returns the `snapshot` job, whose result names it."""
        return self._create("POST", f"{collection_path(name)}/snapshots", idempotency_key)

    def snapshots(self, name: str) -> list[dict]:
        """The collection's snapshots (id, version, bytes, sha256, created_at), oldest first."""
        return self.request("GET", f"{collection_path(name)}/snapshots").json()["snapshots"]

    @staticmethod
    def _snapshot_segment(snapshot_id: str) -> str:
        if not is_snapshot_id(snapshot_id):
            raise InvalidArgument(f"{snapshot_id!r} is not a snapshot id (like 20261206T101500Z-1a2b3c4d)")
        return segment(snapshot_id)

    def download_snapshot(self, name: str, snapshot_id: str, dest: str | os.PathLike) -> dict:
        """Stream a snapshot's archive to `dest` (written under a temporary name, renamed when its
        sha256 matches the server's X-Swapline-SHA256); returns {"path", "bytes", "sha256"}."""
        path = f"{collection_path(name)}/snapshots/{self._snapshot_segment(snapshot_id)}/download"
        resp = self.request("GET", path, stream=True)
        tmp = f"{os.fspath(dest)}.part"
        digest, size = hashlib.sha256(), 0
        try:
            with resp, open(tmp, "wb") as fh:
                for chunk in resp.iter_content(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
            expected = resp.headers.get("X-Swapline-SHA256")
            if expected and expected != digest.hexdigest():
                raise ApiUnreachable(f"the download of snapshot {snapshot_id} arrived damaged (sha256 "
                                     f"{digest.hexdigest()}, the server's {expected}); try again")
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return {"path": os.fspath(dest), "bytes": size, "sha256": digest.hexdigest()}

    def restore_snapshot(self, name: str, collection: str, snapshot_id: str,
                         idempotency_key: str | None = None) -> dict:
        """Create collection `name` from a kept snapshot of `collection` (admin); returns the `restore` job."""
        collection_segment(name)
        collection_segment(collection)
        self._snapshot_segment(snapshot_id)
        body = {"name": name, "from_snapshot": {"collection": collection, "id": snapshot_id}}
        return self._create("POST", "/v1/collections", idempotency_key, json=body)

    def restore_archive(self, name: str, archive: str | os.PathLike) -> dict:
        """Create collection `name` from an archive file (a downloaded snapshot); returns the `restore` job."""
        with open(archive, "rb") as fh:
            return self.request("POST", f"{collection_path(name)}/restore", ok=(202,), data=fh,
                                headers={"Content-Type": "application/x-tar"}).json()

    def recover(self, idempotency_key: str | None = None) -> dict:
        """Register what the data dir holds and Redis does not (admin); returns the `recover` job."""
        return self._create("POST", "/v1/admin/recover", idempotency_key)

    # jobs

    def job(self, job_id: str) -> dict:
        # 202 while queued or running, 200 once finished: both carry the job.
        return self.request("GET", f"/v1/jobs/{id_segment(job_id)}", ok=(200, 202)).json()

    def jobs(self, **filters: Any) -> dict:
        """A page of jobs, newest first: filters collection, state, kind, limit, cursor."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/jobs", params=params).json()

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/v1/jobs/{id_segment(job_id)}/cancel", ok=(200, 202)).json()

    def wait(self, job_id: str, on_update: Callable[[dict], None] | None = None, poll: float = 0.5,
             timeout: float | None = None, stop: threading.Event | None = None) -> dict:
        """Follow a job until it finishes, calling `on_update(job)` on each poll. Returns the succeeded
        job; raises JobFailed (failed or canceled), TimeoutError past `timeout` seconds, or Interrupted
        when `stop` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["state"] in TERMINAL:
                if job["state"] != SUCCEEDED:
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:g} s")
            pause(stop, poll)

    def wait_served(self, name: str, version: int, timeout: float = 120.0, poll: float = 0.2,
                    stop: threading.Event | None = None) -> dict:
        """Wait until every live API process serves `version` of collection `name`, or a newer one.
        A rebuild job succeeds when its version is published; each API process then loads it beside
        the one it serves and swaps (within a fraction of a second for small indexes, seconds for
        millions of chunks), so a search sent in between may still see the older version. Returns the
        collection's status; raises NotServed past `timeout` seconds (naming the processes behind and
        any that failed to load it) or Interrupted when `stop` is set."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.collection(name)
            replicas = status.get("replicas") or {}
            behind = {rid: served for rid, served in replicas.items() if served is None or served < version}
            if replicas and not behind:
                return status
            if time.monotonic() > deadline:
                raise NotServed(name, version, behind, status.get("load_failures") or [], timeout)
            pause(stop, poll)

    def events(self, collection: str | None = None, last_event_id: str | None = None) -> Iterator[events.Event]:
        """Job and index events as they happen (after `last_event_id` when given), without end: the
        stream is reopened with the last id seen whenever the server closes it. Break out to stop."""
        params = {"collection": collection} if collection else {}
        # The server writes a keep-alive at least every SWAPLINE_SSE_HEARTBEAT_SECONDS (15 s).
        yield from events.iterate(self.http, f"{self.base_url}/v1/events", params, last_event_id,
                                  max(self.timeout, 30.0), error_from)


def pause(stop: threading.Event | None, seconds: float) -> None:
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Interrupted()


def _reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if known.lower() in text.lower():
            return known.lower()
    return "connection failed"


def error_from(resp: requests.Response) -> ApiError:
    """The ApiError for an error answer: a problem document's code and detail, or the raw text."""
    try:
        retry_after = float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        retry_after = None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(resp.text.split())[:200] or resp.reason
        return ApiError(resp.status_code, "http_error", text, retry_after=retry_after)
    busy = resp.status_code == 409 and body.get("code") in ("rebuild_in_progress", "reconcile_in_progress")
    cls = RebuildBusy if busy else ApiError
    code = str(body.get("code") or "error")
    message = str(body.get("detail") or body.get("message") or resp.reason)
    return cls(resp.status_code, code, message, body, retry_after)
