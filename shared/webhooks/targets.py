"""Which URLs a webhook may call: http(s) only, and only public addresses unless allowed.

A target is checked when the webhook is created and again at every delivery, after resolving its
host, against every address the name resolves to: a name that pointed at a public address when the
webhook was created may point at 127.0.0.1 or 169.254.169.254 (cloud metadata) later (DNS rebinding).
A delivery then connects to one of the addresses this check returned (`shared.webhooks.pinned`), never
to a second answer for the name, which a rebinding resolver could change between the two look-ups.

Besides the ranges `ipaddress` knows (loopback, private, link-local, multicast, reserved, unspecified,
anything not global), prefixes that carry or reach another network are refused outright: 6to4
(2002::/16) and Teredo (2001::/32) go wherever a relay sends them, site-local fec0::/10 and unique-local
fc00::/7 are some private network, local-use NAT64 64:ff9b:1::/48 too, and IPv4-compatible ::/96 is
deprecated. IPv4-mapped ::ffff:0:0/96 and well-known NAT64 64:ff9b::/96 addresses are judged by the
IPv4 address they carry (so 64:ff9b::a9fe:a9fe, 169.254.169.254 through NAT64, is refused).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

SCHEMES = ("http", "https")


class UnsafeTarget(ValueError):
    """The URL is not one Swapline will call; the message says why."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address

CGNAT = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: the provider's side of a network
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# IPv6 prefixes refused whatever follows them, in the order they are tested.
IPV6_REFUSED = (
    (ipaddress.ip_network("2002::/16"), "6to4"),
    (ipaddress.ip_network("2001::/32"), "Teredo"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
    (ipaddress.ip_network("fc00::/7"), "unique-local"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64"),
)
KINDS = ("loopback", "link_local", "unspecified", "multicast", "reserved", "private")


def _refused(address: Address) -> str | None:
    """Why the address is not a public one a webhook may call, or None."""
    if address.is_loopback or address.is_unspecified:
        return "loopback" if address.is_loopback else "unspecified"
    if isinstance(address, ipaddress.IPv6Address):
        embedded, via = address.ipv4_mapped, "IPv4-mapped"
        if embedded is None and address in NAT64:
            embedded, via = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        if embedded is not None:
            why = _refused(embedded)
            return f"{via} {why}" if why else None
        if address in IPV4_COMPATIBLE:
            return "IPv4-compatible"
        for network, kind in IPV6_REFUSED:
            if address in network:
                return kind
    for kind in KINDS:
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if address in CGNAT:
        return "carrier-grade NAT"
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
    except (OSError, UnicodeError, ValueError) as exc:  # UnicodeError: a name IDNA cannot encode
        raise UnsafeTarget(f"cannot resolve {host!r}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})  # the address: always a str for TCP results


def check(url: str, allow_private: bool) -> list[str]:
    """Resolve the URL's host once and check every address; returns the addresses, the only ones a
    delivery may then connect to. Raises UnsafeTarget."""
    host, port = parse(url)
    addresses = resolve(host, port)
    if not allow_private:
        for text in addresses:
            why = _refused(ipaddress.ip_address(text.split("%")[0]))
            if why:
                raise UnsafeTarget(f"{host} resolves to {text}, a {why} address; webhooks call public "
                                   "addresses only (SWAPLINE_WEBHOOK_ALLOW_PRIVATE=1 allows others)")
    return addresses
