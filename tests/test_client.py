"""The Python client (`webapp.client`) as a good HTTP citizen: retries with backoff on connection errors,
429, 502, 503 and 504, honouring Retry-After, with one Idempotency-Key per job-creating call so a retry
never creates a second job; and its calls against a real API and worker (follow a job with a callback,
iterate events)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
import requests

from tests.support import BIN, LocalHTTP, QuietHandler, create_collection, free_port, wait_for
from webapp.client import ApiError, ApiUnreachable, Client, NotServed

JOB = {"id": "0" * 32, "kind": "ingest", "collection": "docs", "state": "queued"}


class FlakyApi:
    """A local HTTP server that refuses the first `refusals` POSTs with `status` (and Retry-After when
    given), then creates a job and answers 202. It records every request it saw."""

    def __init__(self, status: int, retry_after: str | None, refusals: int = 2, port: int | None = None):
        self.status, self.retry_after, self.refusals = status, retry_after, refusals
        self.seen: list[tuple[float, str, dict]] = []  # (time, path, headers)
        self.jobs: list[dict] = []
        api = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.seen.append((time.monotonic(), self.path, dict(self.headers)))
                if len(api.seen) <= api.refusals:
                    payload = json.dumps({"code": "unavailable", "detail": "busy", "status": api.status}).encode()
                    self.send_response(api.status)
                    if api.retry_after is not None:
                        self.send_header("Retry-After", api.retry_after)
                    self.send_header("Content-Type", "application/problem+json")
                else:
                    api.jobs.append({**JOB, "documents": len(json.loads(body)["documents"])})
                    payload = json.dumps(JOB).encode()
                    self.send_response(202)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = LocalHTTP(Handler, port=port or 0)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def flaky():
    servers: list[FlakyApi] = []

    def make(*args, **kw) -> FlakyApi:
        servers.append(FlakyApi(*args, **kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


DOCS = [{"id": "a.md", "text": "# A\nalpha"}]


@pytest.mark.parametrize(("status", "retry_after"), [(503, "1"), (429, "1"), (502, None), (504, None)])
def test_a_refused_submission_is_retried_with_one_idempotency_key(flaky, status, retry_after):
    api = flaky(status, retry_after)
    job = Client(api.url).add_documents("docs", DOCS)
    assert job["id"] == JOB["id"]
    assert len(api.seen) == 3 and len(api.jobs) == 1, "exactly one job created"
    keys = {headers["Idempotency-Key"] for _, _, headers in api.seen}
    assert len(keys) == 1 and len(keys.pop()) == 32, "every try carries the same Idempotency-Key"
    if retry_after:
        # Retry-After: 1 is honoured (the backoff alone would retry at once, then after 0.5 s).
        gaps = [later[0] - earlier[0] for earlier, later in zip(api.seen, api.seen[1:], strict=False)]
        assert min(gaps) >= 0.9, gaps


def test_each_call_has_its_own_key_unless_one_is_given(flaky):
    api = flaky(503, None, refusals=0)
    client = Client(api.url)
    client.add_documents("docs", DOCS)
    client.add_documents("docs", DOCS)
    client.add_documents("docs", DOCS, idempotency_key="my-key-1")
    keys = [headers["Idempotency-Key"] for _, _, headers in api.seen]
    assert len(set(keys[:2])) == 2 and keys[2] == "my-key-1"


def test_retries_give_up_with_the_last_answer(flaky):
    api = flaky(503, "0", refusals=100)
    with pytest.raises(ApiError) as refused:
        Client(api.url, retries=2).add_documents("docs", DOCS)
    assert refused.value.status == 503 and refused.value.retry_after == 0.0
    assert len(api.seen) == 3 and api.jobs == []


def test_a_connection_refused_is_retried_until_the_api_answers(flaky):
    port = free_port()
    started: list[FlakyApi] = []
    # The API comes up while the client backs off (it waits 0, 0.5, 1, 2 s between tries).
    timer = threading.Timer(0.7, lambda: started.append(flaky(503, None, refusals=0, port=port)))
    timer.start()
    try:
        job = Client(f"http://127.0.0.1:{port}").add_documents("docs", DOCS)
    finally:
        timer.join()
    assert job["id"] == JOB["id"] and len(started[0].jobs) == 1


def test_nothing_answering_is_one_clear_error():
    with pytest.raises(ApiUnreachable, match=r"cannot reach the Swapline API .*connection refused; tried 2 times"):
        Client(f"http://127.0.0.1:{free_port()}", retries=1).search("docs", "anything")


class StatusApi:
    """A local HTTP server answering GET /v1/collections/docs with the next of `statuses` (the last one
    again once they run out), as API processes load a published version one after another."""

    def __init__(self, statuses: list[dict]):
        self.statuses, self.seen = statuses, 0
        api = self

        class Handler(QuietHandler):
            def do_GET(self):
                status = api.statuses[min(api.seen, len(api.statuses) - 1)]
                api.seen += 1
                payload = json.dumps({"name": "docs", **status}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = LocalHTTP(Handler)
        self.url = self.server.url


def test_waiting_for_a_version_to_be_served_ends_when_every_api_process_has_it_or_a_newer_one():
    api = StatusApi([{"replicas": {}, "load_failures": []},
                     {"replicas": {"a": 1, "b": None}, "load_failures": []},
                     {"replicas": {"a": 2, "b": 1}, "load_failures": []},
                     {"replicas": {"a": 3, "b": 2}, "load_failures": []}])
    try:
        status = Client(api.url).wait_served("docs", 2, poll=0.01)
    finally:
        api.server.close()
    assert api.seen == 4 and status["replicas"] == {"a": 3, "b": 2}


def test_a_version_an_api_process_cannot_load_is_not_served_in_time_and_says_why():
    failure = {"replica": "b", "version": 2, "error": "OSError: bad manifest", "attempts": 3, "since": 0}
    api = StatusApi([{"replicas": {"a": 2, "b": 1}, "load_failures": [failure]}])
    try:
        with pytest.raises(NotServed, match=r"'docs' v2 is published but 1 API process\(es\) did not serve it "
                                            r"within 0.2 s \(b could not load v2: OSError: bad manifest\)") as late:
            Client(api.url).wait_served("docs", 2, timeout=0.2, poll=0.01)
    finally:
        api.server.close()
    assert late.value.behind == {"b": 1} and isinstance(late.value, TimeoutError) and api.seen >= 2
    alone = StatusApi([{"replicas": {}, "load_failures": []}])  # no API process heartbeat seen
    try:
        with pytest.raises(NotServed, match=r"v2 is published but no live API process reported within 0.1 s$"):
            Client(alone.url).wait_served("docs", 2, timeout=0.1, poll=0.01)
    finally:
        alone.server.close()


# ---- integration: a proxy that loses answers, in front of the real API -------------------------------


class LosingProxy:
    """Forwards every request to the real API, but replaces the answer to the first `lose` POSTs to
    .../documents with 503 + Retry-After: 1, as a gateway does when the backend answered too late.
    The API did create the job each time: only an Idempotency-Key makes the retries harmless."""

    def __init__(self, target: str, lose: int = 2):
        self.lost = 0
        proxy = self

        class Handler(QuietHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = requests.request(self.command, target + self.path, data=body, headers=headers, timeout=30)
                status, payload, extra = resp.status_code, resp.content, {}
                if self.command == "POST" and self.path.endswith("/documents") and proxy.lost < lose:
                    proxy.lost += 1
                    status, payload, extra = 503, b'{"code": "bad_gateway_timeout"}', {"Retry-After": "1"}
                self.send_response(status)
                self.send_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _forward

        self.server = LocalHTTP(Handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


def _ingest_jobs(base: str) -> list[dict]:
    return requests.get(f"{base}/v1/jobs", params={"collection": "docs", "kind": "ingest"}, timeout=10).json()["jobs"]


@pytest.mark.integration
def test_the_cli_behind_a_proxy_that_loses_answers_creates_one_job(settings, procs, tmp_path):
    base = procs.api(settings)
    procs.worker(settings)
    create_collection(base)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# Alpha\nThe alpha note.")
    proxy = LosingProxy(base)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")} | {"SWAPLINE_URL": proxy.url}
        result = subprocess.run([str(BIN / "swapline"), "ingest", str(folder), "-c", "docs", "--json"],
                                capture_output=True, text=True, env=env, timeout=120)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.lost == 2
    summary = json.loads(result.stdout)
    assert summary["documents"] == 1 and summary["jobs"] == 1
    assert len(_ingest_jobs(base)) == 1, "a retried submission created a second job"


@pytest.mark.integration
def test_without_an_idempotency_key_the_same_retries_would_create_three_jobs(settings, procs):
    # Proves the test above can fail: the same retries, without the key.
    base = procs.api(settings)
    create_collection(base)
    proxy = LosingProxy(base)
    try:
        client = Client(proxy.url)
        client.http.post(f"{proxy.url}/v1/collections/docs/documents", json={"documents": DOCS, "rebuild": False},
                         timeout=30)
    finally:
        proxy.close()
    assert proxy.lost == 2 and len(_ingest_jobs(base)) == 3


@pytest.mark.integration
def test_client_calls_on_a_real_api(settings, procs):
    fast = settings.with_(sse_heartbeat_seconds=0.5)
    base = procs.api(fast)
    procs.worker(fast)
    client = Client(base)
    assert client.ready() and client.alive()
    assert client.create_collection("docs") is True and client.create_collection("docs") is False

    seen_events: list = []
    found = threading.Event()

    def follow_events():
        for event in client.events(collection="docs"):
            seen_events.append(event)
            if event.type == "index.published":
                found.set()
                return

    reader = threading.Thread(target=follow_events, daemon=True)
    reader.start()
    wait_for(lambda: reader.is_alive(), timeout=5)
    job = client.add_documents("docs", [{"id": f"d{i}", "text": f"# T{i}\nitem{i} text"} for i in range(20)])
    states: list[str] = []
    done = client.wait(job["id"], on_update=lambda j: states.append(j["state"]), poll=0.1)
    assert done["state"] == "succeeded" and states[-1] == "succeeded"
    rebuilt = client.wait(done["result"]["rebuild_job_id"], poll=0.1)
    reader.join(30)
    assert found.is_set(), [e.type for e in seen_events]
    types = [e.type for e in seen_events]
    assert "job.succeeded" in types and all(e.data["collection"] == "docs" for e in seen_events)

    # Resuming after an event yields the ones after it, in order.
    first = seen_events[0]
    resumed = []
    for event in client.events(collection="docs", last_event_id=first.id):
        resumed.append(event)
        if len(resumed) == len(seen_events) - 1:
            break
    assert [e.id for e in resumed] == [e.id for e in seen_events[1:]]

    # Published is not yet served: the API process loads the version after the job ends.
    served = client.wait_served("docs", rebuilt["result"]["version"], poll=0.05)
    assert served["converged"] and served["index"]["version"] == rebuilt["result"]["version"]
    assert client.search("docs", "item3", k=2)["hits"][0]["doc_id"] == "d3"
    with pytest.raises(ApiError) as missing:
        client.collection("nope")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    dropped = client.wait(client.drop_collection("docs")["id"], poll=0.1)
    assert dropped["state"] == "succeeded"
    with pytest.raises(ApiError) as gone:
        client.collection("docs")
    assert gone.value.status == 404
