"""Webhooks: targets refused or allowed, the dispatcher (no event lost when it dies half-way), signed
deliveries with retries and backoff, and the whole path on real processes: a local HTTP receiver that
first answers 500 gets the delivery again, signed, and the delivery log shows both attempts."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests

from shared.settings import Settings
from shared.store.webhooks import DELIVERED, FAILED, PENDING
from shared.webhooks import targets
from shared.webhooks.delivery import backoff, deliver, delivery_id, dispatch, sign, verify
from tests.support import LocalHTTP, QuietHandler, create_collection, ingest_and_rebuild, make_services, wait_for


class Receiver:
    """A local HTTP server that records every request and answers the statuses it is given, in turn
    (the last one from then on)."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = LocalHTTP(Handler)
        self.url = f"{self.server.url}/hook"

    def close(self):
        self.server.close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


# ---- unit: targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.org/x", "only http and https"),
    ("http:///path", "no host"),
    ("http://user:pw@8.8.8.8/", "credentials"),
    ("http://127.0.0.1:9/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.10/", "private"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
])
def test_unsafe_targets_are_refused_by_default(url, why):
    with pytest.raises(targets.UnsafeTarget, match=why):
        targets.check(url, allow_private=False)


def fake_dns(monkeypatch, answers: dict[str, list[str]]) -> None:
    """Names under example.com resolve to the given addresses or not at all, without a query leaving
    this machine; everything else (the test's Redis at 127.0.0.1) resolves as usual."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if not str(host).endswith("example.com"):
            return real(host, port, *args, **kwargs)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]]

    monkeypatch.setattr(targets.socket, "getaddrinfo", getaddrinfo)


def test_every_address_of_a_name_is_checked(monkeypatch):
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"], "mixed.example.com": ["93.184.216.34", "10.0.0.7"]})
    assert targets.check("https://hooks.example.com/x", allow_private=False) == ["93.184.216.34"]
    with pytest.raises(targets.UnsafeTarget, match="10.0.0.7, a private address"):
        targets.check("https://mixed.example.com/x", allow_private=False)
    with pytest.raises(targets.UnsafeTarget, match="cannot resolve"):
        targets.check("https://gone.example.com/x", allow_private=False)


def test_public_and_allowed_private_targets_pass():
    assert targets.check("https://8.8.8.8:8443/hook", allow_private=False) == ["8.8.8.8"]
    assert targets.check("http://127.0.0.1:9/", allow_private=True) == ["127.0.0.1"]


def test_backoff_doubles_from_the_default_base_up_to_the_cap():
    svc = make_services(Settings(embedder="hash"), _fake())
    assert [backoff(svc, attempt) for attempt in range(1, 6)] == [10.0, 20.0, 40.0, 80.0, 160.0]
    assert backoff(svc, 20) == 3600.0
    assert Settings().webhook_max_attempts == 8 and Settings().webhook_allow_private is False


def _fake():
    import fakeredis

    return fakeredis.FakeRedis(decode_responses=True)


# ---- unit: dispatcher and one delivery attempt -----------------------------------------------------


@pytest.fixture
def svc(client, tmp_path):
    return make_services(Settings(embedder="hash", data_dir=tmp_path, webhook_allow_private=True,
                                  webhook_retry_base_seconds=0.5), client)


def test_dispatcher_fans_out_subscribed_events_and_survives_dying_half_way(svc):
    svc.webhooks.init_cursor(svc.events.last_id())
    hook, _ = svc.webhooks.create("http://127.0.0.1:9/", ["job.succeeded"], "docs")
    other, _ = svc.webhooks.create("http://127.0.0.1:9/", ["job.failed", "job.succeeded"], None)
    ids = [svc.events.append("job.succeeded", job_id=f"{i:032x}", collection="docs" if i % 2 else "misc")
           for i in range(4)]
    svc.events.append("job.progress", job_id="0" * 32, collection="docs")

    sent: list[str] = []

    def dying(did):
        if len(sent) == 3:
            raise ConnectionError("broker went away")
        sent.append(did)

    with pytest.raises(ConnectionError):
        dispatch(svc, dying)
    assert svc.webhooks.cursor() != ids[-1]  # nothing was passed over
    assert dispatch(svc, sent.append) >= 3  # the rest, and the recorded-but-unsent ones again
    expected = {delivery_id(hook["id"], ids[1]), delivery_id(hook["id"], ids[3])} | {
        delivery_id(other["id"], i) for i in ids}
    assert set(sent) == expected
    assert dispatch(svc, sent.append) == 0  # a later run sends nothing twice
    assert [d["event"]["id"] for d in svc.webhooks.deliveries(hook["id"])] == [ids[3], ids[1]]


def test_a_failed_attempt_is_logged_and_retried_then_delivered_signed(svc, receiver):
    target = receiver([500, 204])
    hook, secret = svc.webhooks.create(target.url, ["job.succeeded"], None)
    event_id = svc.events.append("job.succeeded", job_id="a" * 32, collection="docs")
    sent: list[str] = []
    dispatch(svc, sent.append)
    (did,) = sent
    first = deliver(svc, did)
    assert first.state == PENDING and first.retry_in == 0.5
    second = deliver(svc, did)
    assert second.state == DELIVERED
    assert deliver(svc, did).state == "skipped"  # a duplicate message delivers nothing twice
    log = svc.webhooks.delivery(did)
    assert log["attempts"] == 2 and [a["status_code"] for a in log["history"]] == [500, 204]
    for attempt, request in enumerate(target.requests, start=1):
        timestamp = request["headers"]["X-Swapline-Timestamp"]
        assert request["headers"]["X-Swapline-Signature"] == hmac.new(
            secret.encode(), f"{timestamp}.".encode() + request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Swapline-Attempt"] == str(attempt)
        assert json.loads(request["body"])["event"]["id"] == event_id


def test_delivery_rechecks_the_target_and_gives_up_after_max_attempts(client, tmp_path, receiver, monkeypatch):
    target = receiver([503])
    strict = make_services(Settings(embedder="hash", data_dir=tmp_path, webhook_max_attempts=2,
                                    webhook_retry_base_seconds=0.01), client)
    # DNS rebinding: the name resolved to a public address when the webhook was created ...
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    targets.check("http://hooks.example.com/hook", allow_private=False)
    rebound, _ = strict.webhooks.create("http://hooks.example.com/hook", ["job.failed"], None)
    # ... and to this machine by the time of the delivery: refused, nothing is sent.
    fake_dns(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})
    strict.events.append("job.failed", job_id="b" * 32)
    sent: list[str] = []
    dispatch(strict, sent.append)
    assert deliver(strict, sent[0]).state == FAILED
    assert target.requests == [] and "127.0.0.1, a loopback address" in strict.webhooks.delivery(sent[0])["error"]
    monkeypatch.undo()
    assert strict.webhooks.delete(rebound["id"]) and strict.webhooks.delivery(sent[0]) is None
    strict.webhooks.create(target.url, ["job.failed"], None)
    lenient = make_services(strict.settings.with_(webhook_allow_private=True), client)
    strict.events.append("job.failed", job_id="c" * 32)
    dispatch(lenient, sent.append)
    assert [deliver(lenient, sent[1]).state, deliver(lenient, sent[1]).state] == [PENDING, FAILED]
    assert len(target.requests) == 2 and lenient.webhooks.delivery(sent[1])["error"] == "HTTP 503"


def test_sign_is_hmac_sha256_hex_of_the_timestamp_and_the_body():
    assert sign("k", "1700000000", b"body") == hmac.new(b"k", b"1700000000.body", hashlib.sha256).hexdigest()


# ---- integration: real API, real worker with beat, a local receiver -----------------------------------


@pytest.mark.integration
def test_webhook_is_delivered_signed_and_retried_after_a_500(settings, procs, receiver):
    s = settings.with_(webhook_allow_private=True, webhook_retry_base_seconds=0.5, webhook_dispatch_seconds=0.5)
    base = procs.api(s)
    procs.worker(s, beat=True)
    target = receiver([500, 200])
    create_collection(base, "docs")
    resp = requests.post(f"{base}/v1/webhooks", json={"url": target.url, "events": ["job.succeeded"],
                                                      "collection": "docs"}, timeout=10)
    assert resp.status_code == 201, resp.text
    hook = resp.json()
    secret = hook.pop("secret")
    assert len(secret) == 64 and resp.headers["Location"] == f"/v1/webhooks/{hook['id']}"
    listed = requests.get(f"{base}/v1/webhooks", timeout=10).json()["webhooks"]
    assert listed == [hook] and "secret" not in listed[0]

    ingest_job, rebuild_job = ingest_and_rebuild(base, [{"id": "a", "text": "# A\nalpha"}], "docs")
    # Two events (the ingest and the rebuild succeeded); the first attempt of the first one got a 500.
    wait_for(lambda: len(target.requests) >= 3, timeout=60, message="three webhook requests")
    bodies = [json.loads(r["body"]) for r in target.requests]
    for request in target.requests:
        headers = request["headers"]
        assert verify(secret, headers["X-Swapline-Timestamp"], request["body"], headers["X-Swapline-Signature"])
        assert request["headers"]["X-Swapline-Event"] == "job.succeeded"
    # The request that got the 500 came again, the same delivery id, as attempt 2.
    again = [r for r, b in zip(target.requests[1:], bodies[1:], strict=True) if b["id"] == bodies[0]["id"]]
    assert len(again) == 1 and again[0]["headers"]["X-Swapline-Attempt"] == "2"
    assert {b["event"]["job_id"] for b in bodies} == {ingest_job["id"], rebuild_job["id"]}

    def logged():
        found = requests.get(f"{base}/v1/webhooks/{hook['id']}/deliveries", timeout=10).json()["deliveries"]
        return found if len(found) == 2 and all(d["state"] == "delivered" for d in found) else None

    deliveries = wait_for(logged, timeout=30, message="both deliveries logged as delivered")
    retried = next(d for d in deliveries if d["id"] == bodies[0]["id"])
    assert retried["attempts"] == 2 and [a["status_code"] for a in retried["history"]] == [500, 200]
    assert retried["event"]["type"] == "job.succeeded" and retried["status_code"] == 200

    assert requests.delete(f"{base}/v1/webhooks/{hook['id']}", timeout=10).status_code == 204
    assert requests.get(f"{base}/v1/webhooks/{hook['id']}/deliveries", timeout=10).status_code == 404


@pytest.mark.integration
def test_webhook_to_a_loopback_target_is_refused_at_the_default_setting(settings, procs, receiver):
    base = procs.api(settings)  # SWAPLINE_WEBHOOK_ALLOW_PRIVATE unset
    target = receiver([200])
    resp = requests.post(f"{base}/v1/webhooks", json={"url": target.url, "events": ["job.failed"]}, timeout=10)
    assert resp.status_code == 422, resp.text
    assert "loopback" in resp.json()["errors"]["url"][0]
    bad = requests.post(f"{base}/v1/webhooks", json={"url": "http://8.8.8.8/", "events": ["job.progress"]},
                        timeout=10)
    assert bad.status_code == 422 and "events" in bad.json()["errors"]
    assert requests.get(f"{base}/v1/webhooks", timeout=10).json() == {"webhooks": []}


def test_the_secret_is_never_logged_nor_shown_after_creation(svc, receiver, caplog):
    """The secret must stay in Redis to sign (see shared/webhooks/delivery.py); nothing else holds it."""
    caplog.set_level("DEBUG")
    target = receiver([500, 204])
    hook, secret = svc.webhooks.create(target.url, ["job.succeeded"], None)
    svc.events.append("job.succeeded", job_id="d" * 32, collection="docs")
    sent: list[str] = []
    dispatch(svc, sent.append)
    assert [deliver(svc, sent[0]).state, deliver(svc, sent[0]).state] == [PENDING, DELIVERED]
    assert secret not in caplog.text
    shown = json.dumps([svc.webhooks.get(hook["id"]), svc.webhooks.all(), svc.webhooks.deliveries(hook["id"])])
    assert "secret" not in shown and secret not in shown
