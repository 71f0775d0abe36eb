"""Finding 5, webhook SSRF: the delivery connects to the address it checked (a name re-pointed between
the check and the connection reaches nothing else), with the Host header, TLS SNI and the certificate
check on the name; 6to4, Teredo, site-local, unique-local and NAT64 targets are refused; a receiver
that answers forever or a byte at a time is cut at the byte cap or the attempt's total deadline; each
delivery is signed over a timestamp and the body."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import fakeredis
import pytest

from shared.settings import Settings
from shared.store.webhooks import DELIVERED, PENDING
from shared.webhooks import targets
from shared.webhooks.delivery import deliver, dispatch
from tests.support import LocalHTTP, QuietHandler, make_services

pytestmark = pytest.mark.security

PUBLIC = "93.184.216.34"


class Server:
    """A local HTTP server whose POST handler is `respond(handler, stop)`; `stop` is set at teardown
    so handlers that would write forever end."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler, threading.Event], None],
                 wrap: Callable[[socket.socket], socket.socket] | None = None):
        self.requests: list[dict] = []
        self.stop = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append({"headers": dict(self.headers), "body": body})
                try:
                    respond(self, server.stop)
                except OSError:
                    pass  # the client hung up: what the tests expect of it

        self.http = LocalHTTP(Handler, wrap=wrap)
        self.port = self.http.port

    def close(self):
        self.stop.set()
        self.http.close()


def answer(status: int) -> Callable[[BaseHTTPRequestHandler, threading.Event], None]:
    def respond(handler, stop):
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


@pytest.fixture
def server():
    made: list[Server] = []

    def make(respond, wrap=None):
        made.append(Server(respond, wrap))
        return made[-1]

    yield make
    for s in made:
        s.close()


def rebinding_dns(monkeypatch, first: list[str], then: list[str]) -> list[str]:
    """hooks.example.com answers `first` to the first query and `then` to every later one (DNS
    rebinding, with a zero TTL); other names resolve as usual. Returns the names asked, in order."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "hooks.example.com":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        answers = first if len(asked) == 1 else then
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def services(**overrides):
    settings = Settings(embedder="hash", webhook_retry_base_seconds=0.5, **overrides)
    return make_services(settings, client=fakeredis.FakeRedis(decode_responses=True))


def one_delivery(svc, url: str) -> tuple[str, str]:
    """A webhook on `url` and one pending delivery of it; returns (delivery id, secret)."""
    svc.webhooks.init_cursor(svc.events.last_id())
    _, secret = svc.webhooks.create(url, ["job.succeeded"], None)
    svc.events.append("job.succeeded", job_id="a" * 32, collection="docs")
    sent: list[str] = []
    dispatch(svc, sent.append)
    (did,) = sent
    return did, secret


def deliver_within(svc, did: str, seconds: float):
    """deliver() in a thread; None when it is still running after `seconds` (the test then fails)."""
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(outcome=deliver(svc, did)), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    return done.get("outcome"), time.monotonic() - started


# ---- the address checked is the address connected to --------------------------------------------------


def test_a_name_rebound_to_loopback_after_the_check_is_never_connected_to(monkeypatch, server):
    receiver = server(answer(200))
    svc = services(webhook_timeout_seconds=2.0)  # private targets refused (the default)
    did, _ = one_delivery(svc, f"http://hooks.example.com:{receiver.port}/hook")
    rebinding_dns(monkeypatch, first=[PUBLIC], then=["127.0.0.1"])
    real_connect = socket.create_connection
    connected: list[tuple] = []

    def create_connection(address, *args, **kwargs):
        connected.append(address[:2])
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(111, "refused (the test reaches no public address)")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    outcome = deliver(svc, did)
    assert receiver.requests == [], "the delivery reached 127.0.0.1 after checking a public address"
    assert outcome.state == PENDING and connected == [(PUBLIC, receiver.port)]


def test_the_checked_address_is_pinned_and_the_host_header_keeps_the_name(monkeypatch, server):
    receiver = server(answer(204))
    svc = services(webhook_allow_private=True, webhook_timeout_seconds=1.0)
    did, _ = one_delivery(svc, f"http://hooks.example.com:{receiver.port}/hook")
    # Checked at 127.0.0.1 (allowed here); re-resolving would give an address that answers nothing.
    asked = rebinding_dns(monkeypatch, first=["127.0.0.1"], then=["192.0.2.1"])
    assert deliver(svc, did).state == DELIVERED
    assert len(asked) == 1, "the name was resolved again after the check"
    (request,) = receiver.requests
    assert request["headers"]["Host"] == f"hooks.example.com:{receiver.port}"


def _certificate(tmp_path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context with a certificate for `name`, a client context trusting its CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swapline test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server_ctx, client_ctx


@pytest.mark.parametrize(("cert_name", "delivered"), [("hooks.example.com", True), ("other.example.com", False)])
def test_tls_to_the_pinned_address_checks_the_certificate_of_the_name(tmp_path, server, cert_name, delivered):
    from shared.webhooks import pinned

    server_ctx, client_ctx = _certificate(tmp_path, cert_name)
    seen_sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    receiver = server(answer(200), wrap=lambda sock: server_ctx.wrap_socket(sock, server_side=True,
                                                                            do_handshake_on_connect=False))
    url = f"https://hooks.example.com:{receiver.port}/hook"
    if delivered:
        got = pinned.post(url, ["127.0.0.1"], b"{}", {"Content-Type": "application/json"}, 5.0, context=client_ctx)
        assert got.status == 200
        assert receiver.requests[0]["headers"]["Host"] == f"hooks.example.com:{receiver.port}"
    else:
        with pytest.raises(ssl.SSLCertVerificationError):
            pinned.post(url, ["127.0.0.1"], b"{}", {}, 5.0, context=client_ctx)
        assert receiver.requests == []
    assert seen_sni[:1] == ["hooks.example.com"]


# ---- addresses that reach private networks under another prefix ------------------------------------------


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:808:808::1",  # 6to4 of a public address: a relay decides where it goes; refused too
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fec0::1",  # site-local (deprecated, still routed on some networks)
    "fd12:3456:789a::1",  # unique-local
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",  # local-use NAT64 prefix
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::ffff:a9fe:a9fe",  # IPv4-mapped 169.254.169.254
    "100.64.0.1",  # carrier-grade NAT
])
def test_tunnelled_and_site_local_addresses_are_refused(address):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(targets.UnsafeTarget, match="address; webhooks call public addresses only"):
        targets.check(f"http://{host}/hook", allow_private=False)


# ---- receivers that never finish --------------------------------------------------------------------------


def endless_body(handler, stop):
    handler.send_response(200)
    handler.end_headers()  # no length: the body ends when the connection does
    chunk = b"x" * 65536
    while not stop.is_set():
        handler.wfile.write(chunk)
        time.sleep(0.005)  # about 13 MB/s: enough to show no cap, little enough to spare the machine


def trickled_body(handler, stop):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    while not stop.is_set():
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(0.1)  # far inside any per-read timeout


def trickled_headers(handler, stop):
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not stop.is_set():
        handler.wfile.write(b"a")
        handler.wfile.flush()
        time.sleep(0.1)


def test_an_endless_body_is_cut_at_the_byte_cap(server):
    receiver = server(endless_body)
    svc = services(webhook_allow_private=True, webhook_timeout_seconds=30.0)
    did, _ = one_delivery(svc, f"http://127.0.0.1:{receiver.port}/hook")
    outcome, seconds = deliver_within(svc, did, 5.0)
    assert outcome is not None, "the delivery was still reading an endless body after 5 s"
    assert outcome.state == DELIVERED  # the 200 counts; the rest was never read


@pytest.mark.parametrize(("respond", "state"), [(trickled_body, DELIVERED), (trickled_headers, PENDING)])
def test_a_receiver_trickling_bytes_is_cut_at_the_total_deadline(server, respond, state):
    receiver = server(respond)
    svc = services(webhook_allow_private=True, webhook_timeout_seconds=1.0)
    did, _ = one_delivery(svc, f"http://127.0.0.1:{receiver.port}/hook")
    outcome, seconds = deliver_within(svc, did, 6.0)
    assert outcome is not None, "a receiver sending a byte every 0.1 s held the attempt past 6 s"
    assert outcome.state == state
    if state == PENDING:
        assert "deadline" in svc.webhooks.delivery(did)["error"]


# ---- the signature covers a timestamp ---------------------------------------------------------------------


def test_each_delivery_carries_a_timestamp_and_a_signature_over_it_and_the_body(server):
    receiver = server(answer(200))
    svc = services(webhook_allow_private=True)
    did, secret = one_delivery(svc, f"http://127.0.0.1:{receiver.port}/hook")
    before = int(time.time())
    assert deliver(svc, did).state == DELIVERED
    (request,) = receiver.requests
    timestamp = request["headers"].get("X-Swapline-Timestamp")
    assert timestamp is not None and before <= int(timestamp) <= time.time() + 1
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Swapline-Signature"] == expected
    assert json.loads(request["body"])["id"] == did

    from shared.webhooks.delivery import verify

    signature, body = request["headers"]["X-Swapline-Signature"], request["body"]
    assert verify(secret, timestamp, body, signature, now=int(timestamp) + 10)
    assert not verify(secret, timestamp, body, signature, now=int(timestamp) + 301)  # replayed later
    assert not verify(secret, timestamp, body + b" ", signature, now=int(timestamp))
    assert not verify(secret, str(int(timestamp) + 1), body, signature, now=int(timestamp))
    assert not verify(secret, "not-a-number", body, signature, now=int(timestamp))


def test_a_name_that_cannot_be_encoded_is_refused_not_a_crash():
    """`getaddrinfo` raises UnicodeError for a name IDNA cannot encode (an empty label, one over 63
    characters): that is an unsafe target, never an unhandled error."""
    for url in ("http://a..b/hook", f"http://{'x' * 70}.example/hook"):
        with pytest.raises(targets.UnsafeTarget, match="cannot resolve"):
            targets.check(url, False)
