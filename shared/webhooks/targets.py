"""Which URLs a webhook may call: http(s) only, and only public addresses unless allowed.

A target is checked when the webhook is created and again at every delivery, after resolving its
host, against every address the name resolves to: a name that pointed at a public address when the
webhook was created may point at 127.0.0.1 or 169.254.169.254 (cloud metadata) later (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

SCHEMES = ("http", "https")


class UnsafeTarget(ValueError):
    """The URL is not one Swapline will call; the message says why."""


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "non-public"
    return None


def parse(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; raises UnsafeTarget for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise UnsafeTarget("only http and https URLs")
    if not parts.hostname:
        raise UnsafeTarget("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeTarget("credentials in the URL are not allowed; verify the signature header instead")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeTarget(f"cannot resolve {host!r}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})  # the address: always a str for TCP results


def check(url: str, allow_private: bool) -> list[str]:
    """Resolve the URL's host and check every address; returns the addresses. Raises UnsafeTarget."""
    host, port = parse(url)
    addresses = resolve(host, port)
    if not allow_private:
        for text in addresses:
            why = _refused(ipaddress.ip_address(text.split("%")[0]))
            if why:
                raise UnsafeTarget(f"{host} resolves to {text}, a {why} address; webhooks call public "
                                   "addresses only (SWAPLINE_WEBHOOK_ALLOW_PRIVATE=1 allows others)")
    return addresses
