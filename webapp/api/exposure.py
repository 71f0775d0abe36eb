"""Who can reach this process: loopback checks for the addresses the API (and, in `make run`, Flower)
listens on, and for the Host header an API without keys answers. The launcher imports this module too,
so the API's gunicorn start and `make run` judge an address the same way."""

from __future__ import annotations

import ipaddress

from shared.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """A host name or address that only this machine reaches; 0.0.0.0 and :: (every interface) are not."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(authority: str) -> str:
    """The host of `host:port`, `[v6]:port`, `[v6]` or `host`, without brackets, lower-cased."""
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0].lower()
    return authority.rsplit(":", 1)[0].lower() if authority.count(":") == 1 else authority.lower()


def refuse_open_exposure(settings: Settings, binds: list[str]) -> None:
    """Refuse to serve without keys on anything but loopback, unless SWAPLINE_AUTH=open says so
    (gunicorn's start calls this with the addresses it binds). Raises SystemExit with the reason."""
    if settings.api_keys or settings.auth == "open":
        return
    exposed = [b for b in binds if not b.startswith(("unix:", "fd://")) and not is_loopback(host_of(b))]
    if exposed:
        raise SystemExit(f"refusing to listen on {', '.join(exposed)} without API keys: set SWAPLINE_API_KEYS "
                         "(key:role,..., keys of 24 characters or more), or SWAPLINE_AUTH=open to serve every caller "
                         "as admin on purpose")
