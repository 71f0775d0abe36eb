"""API keys with roles: `read` < `write` < `admin` (a higher role includes the lower ones).

Keys come from `SWAPLINE_API_KEYS` ("k1:admin,k2:write,k3:read"). A request carries its key as
`Authorization: Bearer KEY`. HTTP Basic (the key as password, which a browser sends after a prompt) is
accepted only where a browser needs it: the /admin page and the event stream it follows (GET
/v1/events). A browser sends Basic credentials with every request to the site, cross-site form posts
included, so accepting them on the API would let any page an operator visits act as the operator
(CSRF). The admin page's own POSTs (under /admin) must also carry `X-CSRF-Token`, a value derived
from the key that the page embeds, and come from the same origin. Without a key the answer is 401 with
`WWW-Authenticate`; with a key whose role is too low, 403. With no keys configured the API runs open,
logs a warning at start, and /readyz reports `checks.auth = "open"`.

Every request is checked in one `before_request` hook, so a new route is protected by default:

- a view marked `@requires("admin")` (or "read"/"write") needs that role; one marked `@public` needs none;
- otherwise, under /v1: GET and HEAD need `read`, DELETE needs `admin`, every other method `write`;
  /admin needs `admin`, /metrics `read`; anything else (health probes, the OpenAPI document and the
  docs UI) is public.

The OpenAPI document gets the bearer scheme, `security`, 401/403 responses and `x-required-role` on
every protected operation from `document_operation`, called by the spec plugin in `webapp.api.apidoc`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app, g, request
from flask_smorest import Blueprint, abort

from shared.settings import ROLES, Settings

log = logging.getLogger(__name__)

RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
PUBLIC = "public"
SCHEME_NAME = "bearerAuth"
ROLE_ATTR = "_swapline_role"
REALM = "swapline"


@dataclass(frozen=True)
class Principal:
    role: str
    key_id: str  # a short digest of the key, safe to log and to scope idempotency keys by


def requires(role: str) -> Callable:
    """Mark a view (a MethodView method or a view function) as needing `role` or higher."""
    if role not in RANK:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return _mark(role)


def public(func: Callable) -> Callable:
    """Mark a view as needing no key at all."""
    return _mark(PUBLIC)(func)


def _mark(role: str) -> Callable:
    def decorator(func: Callable) -> Callable:
        # Blueprint.doc wraps the view and adds to its OpenAPI operation; the marker rides along.
        wrapped = Blueprint.doc(**{"x-required-role": role})(func)
        setattr(wrapped, ROLE_ATTR, role)
        return wrapped
    return decorator


def default_role(method: str, path: str) -> str | None:
    """The role a route needs when its view does not say."""
    if path == "/v1" or path.startswith("/v1/"):
        if method in ("GET", "HEAD"):
            return "read"
        return "admin" if method == "DELETE" else "write"
    if path == "/admin" or path.startswith("/admin/"):
        return "admin"
    if path == "/metrics":
        return "read"
    return None


def _view_role() -> str | None:
    """The explicit marker on the view serving this request, if any."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return None
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        method = "get" if request.method == "HEAD" else request.method.lower()
        handler = getattr(view_class, method, None)
        if handler is not None and hasattr(handler, ROLE_ATTR):
            return getattr(handler, ROLE_ATTR)
    return getattr(view, ROLE_ATTR, None)


def required_role() -> str | None:
    """The role this request needs, None when it is public."""
    if request.method == "OPTIONS" or request.endpoint is None:
        return None  # preflights, and unknown routes (which answer 404/405)
    role = _view_role() or default_role(request.method, request.path)
    return None if role == PUBLIC else role


def basic_allowed() -> bool:
    """Basic credentials count only on the admin page and the event stream it opens."""
    path = request.path
    if path == "/admin" or path.startswith("/admin/"):
        return True
    return path == "/v1/events" and request.method in ("GET", "HEAD")


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return value
    if scheme == "basic" and value and basic_allowed():
        try:
            _, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def csrf_token(principal: Principal | None, ring: KeyRing) -> str:
    """The admin page's token for its own POSTs: derived from the caller's key with the keys only the
    server knows, so another site can neither read nor forge it."""
    secret = ring.secret_for(principal.key_id) if principal else b"open"
    return hmac.new(secret, b"swapline-admin-csrf", hashlib.sha256).hexdigest()[:40]


def _same_origin() -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        # Browsers send Origin on every cross-site POST; a request without one came from a same-origin
        # page of an older browser or from a non-browser client (which needs the token too).
        return True
    return origin.rstrip("/") == f"{request.scheme}://{request.host}"


def check_admin_csrf() -> None:
    """403 for a state-changing /admin request without the page's token or from another origin."""
    if request.method not in UNSAFE_METHODS or not (request.path == "/admin" or request.path.startswith("/admin/")):
        return
    ring: KeyRing = current_app.extensions["swapline_auth"]
    token = request.headers.get(CSRF_HEADER, "")
    if not _same_origin() or not hmac.compare_digest(token.encode(), csrf_token(principal(), ring).encode()):
        abort(403, code="csrf_refused", message=f"admin actions must come from the admin page itself (same origin, "
                                                f"with its {CSRF_HEADER}); reload /admin and try again")


class KeyRing:
    """The configured keys; lookups compare every key in constant time."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]):
        self._pairs = [(key.encode(), role) for key, role in pairs]

    @property
    def open(self) -> bool:
        return not self._pairs

    def secret_for(self, key_id_: str) -> bytes:
        """The key whose id is `key_id_` (as bytes), to derive per-key values from."""
        for known, _role in self._pairs:
            if key_id(known.decode()) == key_id_:
                return known
        return b"unknown"

    def role_of(self, key: str) -> str | None:
        found = None
        presented = key.encode()
        for known, role in self._pairs:
            if hmac.compare_digest(known, presented):
                found = role
        return found


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _challenge(error: str | None = None) -> dict:
    # Basic for the HTML admin page makes a browser prompt for the key; API clients get Bearer.
    scheme = "Basic" if request.path.startswith("/admin") else "Bearer"
    value = f'{scheme} realm="{REALM}"'
    if error and scheme == "Bearer":
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


def authenticate() -> None:
    """The before_request hook: 401/403 unless the request carries a key with the role it needs (and,
    for the admin page's own actions, its CSRF token)."""
    role = required_role()
    ring: KeyRing = current_app.extensions["swapline_auth"]
    if ring.open:
        check_host()
        g.swapline_principal = Principal("admin", "open")
        check_admin_csrf()
        return
    key = _presented_key()
    if role is None:
        if key and (found := ring.role_of(key)):
            g.swapline_principal = Principal(found, key_id(key))
        return
    if key is None:
        basic = request.headers.get("Authorization", "").lower().startswith("basic ")
        message = ("Basic credentials are accepted only by the admin page and its event stream; send "
                   "Authorization: Bearer <key>" if basic else "an API key is required: Authorization: Bearer <key>")
        abort(401, code="unauthorized", message=message, headers=_challenge())
    found = ring.role_of(key)
    if found is None:
        log.warning("event=auth.refused key_id=%s client=%s path=%s", key_id(key), request.remote_addr, request.path)
        abort(401, code="unauthorized", message="the API key is not valid",
              headers=_challenge("invalid_token"))
    if RANK[found] < RANK[role]:
        abort(403, code="forbidden", message=f"this operation needs the {role} role; the key has {found}")
    g.swapline_principal = Principal(found, key_id(key))
    check_admin_csrf()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """A host name or address that only this machine reaches."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host() -> None:
    """An API without keys answers only requests addressed to it by a loopback name or an allowed host:
    a page on another site that re-binds its own name to 127.0.0.1 sends its own name as the Host."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    allowed = current_app.extensions["swapline_allowed_hosts"]
    if not is_loopback(host) and host.strip("[]").lower() not in allowed:
        abort(403, code="host_refused", message=f"this API has no keys and answers only loopback hosts; "
                                                f"{host!r} is not one (SWAPLINE_ALLOWED_HOSTS adds names)")


def refuse_open_exposure(settings: Settings, binds: list[str]) -> None:
    """Refuse to serve without keys on anything but loopback, unless SWAPLINE_AUTH=open says so
    (gunicorn's start calls this with the addresses it binds). Raises SystemExit with the reason."""
    if settings.api_keys or settings.auth == "open":
        return
    exposed = [b for b in binds if not b.startswith(("unix:", "fd://")) and not is_loopback(b.rsplit(":", 1)[0])]
    if exposed:
        raise SystemExit(f"refusing to listen on {', '.join(exposed)} without API keys: set SWAPLINE_API_KEYS "
                         "(key:role,..., keys of 24 characters or more), or SWAPLINE_AUTH=open to serve every caller "
                         "as admin on purpose")


def principal() -> Principal | None:
    return g.get("swapline_principal")


def mode(app: Flask | None = None) -> str:
    """"open" (no keys configured) or "keys", for /readyz."""
    ring: KeyRing = (app or current_app).extensions["swapline_auth"]
    return "open" if ring.open else "keys"


def init_app(app: Flask, settings: Settings) -> None:
    ring = KeyRing(settings.api_keys)
    app.extensions["swapline_auth"] = ring
    app.extensions["swapline_allowed_hosts"] = {h.strip().strip("[]").lower()
                                                for h in settings.allowed_hosts.split(",") if h.strip()}
    app.before_request(authenticate)
    if ring.open:
        log.warning("event=auth.open message=%r", "SWAPLINE_API_KEYS is empty: the API accepts every request "
                    "without a key, addressed to a loopback host name only unless SWAPLINE_AUTH=open. Set "
                    "key:role pairs (roles read, write, admin) before exposing it.")
    else:
        counts = {role: sum(1 for _, r in settings.api_keys if r == role) for role in ROLES}
        log.info("event=auth.keys %s", " ".join(f"{role}={n}" for role, n in counts.items()))


# OpenAPI

SECURITY_SCHEME = {"type": "http", "scheme": "bearer",
                   "description": "An API key from SWAPLINE_API_KEYS, with role read, write or admin "
                                  "(admin includes write, write includes read)."}


def document_operation(path: str, method: str, operation: dict) -> None:
    """Add security, the role and the 401/403 responses to one operation of the OpenAPI document."""
    role = operation.get("x-required-role") or default_role(method.upper(), path)
    if role is None or role == PUBLIC:
        operation.pop("x-required-role", None)
        operation["security"] = []
        return
    operation["x-required-role"] = role
    operation["security"] = [{SCHEME_NAME: []}]
    responses = operation.setdefault("responses", {})
    responses.setdefault("401", "UNAUTHORIZED")
    responses.setdefault("403", "FORBIDDEN")
    note = f"Needs an API key with the `{role}` role or higher."
    before = operation.get("description")
    operation["description"] = f"{before}\n\n{note}" if before else note
