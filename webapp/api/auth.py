"""API keys with roles: `read` < `write` < `admin` (a higher role includes the lower ones).

Keys come from `SWAPLINE_API_KEYS` ("k1:admin,k2:write,k3:read"); a grant may be limited to some
collections, "k4:write@docs+notes" (`shared.settings.parse_grant`), and one key may hold several grants.
A request carries its key as
`Authorization: Bearer KEY`. HTTP Basic (the key as password, which a browser sends after a prompt) is
accepted only where a browser needs it: the /admin page and the event stream it follows (GET
/v1/events). A browser sends Basic credentials with every request to the site, cross-site form posts
included, so accepting them on the API would let any page an operator visits act as the operator
(CSRF). The admin page's own POSTs (under /admin) must also carry `X-CSRF-Token`, the token the page
embeds, which is bound to the page's session cookie and expires (`admin_session`), and come from the
same origin. Without a key the answer is 401 with
`WWW-Authenticate`; with a key whose role is too low, 403. With no keys configured the API runs open:
it logs a warning at start, /readyz reports `checks.auth = "open"`, gunicorn refuses to bind anything
but loopback and requests must name a loopback host or one of SWAPLINE_ALLOWED_HOSTS
(`webapp.api.exposure`), unless SWAPLINE_AUTH=open says every caller may come in.

Every request is checked in one `before_request` hook, so a new route is protected by default:

- a view marked `@requires("admin")` (or "read"/"write") needs that role; one marked `@public` needs none;
- otherwise, under /v1: GET and HEAD need `read`, DELETE needs `admin`, every other method `write`;
  /admin needs `admin`, /metrics `read`; anything else (health probes, the OpenAPI document and the
  docs UI) is public.

Scopes are checked here too, once: a route whose path names a collection (`<name>` under
/v1/collections or /admin/collections) answers 404 to a key without a grant on it, exactly as for a
collection that does not exist, and 403 when the grant's role is too low; a route marked
`@scope_filtered` (collection and job lists, jobs, events) lets every key with the role somewhere in and
narrows what it shows with `visible_collections()` / `require_grant()`; every other route (webhooks,
/admin, /metrics) needs a grant on every collection.

Repeated failures (a wrong key) from one client address are limited per minute (`FailureLimit`).

The OpenAPI document gets the bearer scheme, `security`, 401/403 responses and `x-required-role` on
every protected operation from `document_operation`, called by the spec plugin in `webapp.api.apidoc`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from flask import Flask, Response, current_app, g, request
from flask_smorest import Blueprint, abort
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shared.settings import ROLES, Settings, parse_grant
from webapp.api.exposure import host_of, is_loopback

log = logging.getLogger(__name__)

RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
PUBLIC = "public"
SCHEME_NAME = "bearerAuth"
ROLE_ATTR = "_swapline_role"
SCOPE_ATTR = "_swapline_scope_filtered"
REALM = "swapline"


def _higher(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if RANK[a] >= RANK[b] else b


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and its grants."""

    key_id: str  # a short digest of the key, safe to log and to scope idempotency keys by
    everywhere: str | None  # the role the key holds on every collection (an unscoped grant), if any
    # Collection -> role of the key's scoped grants (on top of `everywhere`).
    grants: Mapping[str, str] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """The highest role the key holds anywhere."""
        top = self.everywhere
        for role in self.grants.values():
            top = _higher(top, role)
        assert top is not None  # a key has at least one grant
        return top

    @property
    def visible(self) -> frozenset[str] | None:
        """The collections the key may see; None: all of them."""
        return None if self.everywhere else frozenset(self.grants)

    def role_on(self, collection: str | None) -> str | None:
        """The key's role on `collection` (None: none at all). A thing of no collection counts as
        everywhere's."""
        if collection is None:
            return self.everywhere
        return _higher(self.everywhere, self.grants.get(collection))


OPEN = Principal("open", "admin")


def requires(role: str) -> Callable:
    """Mark a view (a MethodView method or a view function) as needing `role` or higher."""
    if role not in RANK:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return _mark(role)


def public(func: Callable) -> Callable:
    """Mark a view as needing no key at all."""
    return _mark(PUBLIC)(func)


def scope_filtered(func: Callable) -> Callable:
    """Mark a view that names no collection in its path but narrows what it shows or does to the
    caller's collections itself (with `visible_collections` or `require_grant`): a scoped key may call
    it. Unmarked views without a collection in their path need a grant on every collection."""
    wrapped = Blueprint.doc(**{"x-scope-filtered": True})(func)
    setattr(wrapped, SCOPE_ATTR, True)
    return wrapped


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


def _view_marker(attr: str):
    """A marker (`attr`) on the view serving this request, if any."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return None
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        method = "get" if request.method == "HEAD" else request.method.lower()
        handler = getattr(view_class, method, None)
        if handler is not None and hasattr(handler, attr):
            return getattr(handler, attr)
    return getattr(view, attr, None)


def required_role() -> str | None:
    """The role this request needs, None when it is public."""
    if request.method == "OPTIONS" or request.endpoint is None:
        return None  # preflights, and unknown routes (which answer 404/405)
    role = _view_marker(ROLE_ATTR) or default_role(request.method, request.path)
    return None if role == PUBLIC else role


COLLECTION_PATHS = ("/v1/collections/", "/admin/collections/")


def target_collection() -> str | None:
    """The collection this request's path names (`<name>` of a collection route), if any."""
    if not request.path.startswith(COLLECTION_PATHS):
        return None
    name = (request.view_args or {}).get("name")
    return name if isinstance(name, str) else None


def hidden_collection(name: str) -> NoReturn:
    """The answer for a collection that does not exist, or that the caller's key may not see (the two
    must not be told apart)."""
    abort(404, message=f"collection {name!r} does not exist")


def authorize(found: Principal, role: str) -> None:
    """404/403 unless `found` holds `role` where this request acts (see the module docstring)."""
    name = target_collection()
    if name is not None:
        have = found.role_on(name)
        if have is None:
            hidden_collection(name)
    elif _view_marker(SCOPE_ATTR):
        have = found.role
    else:
        have = found.everywhere
        if have is None:
            abort(403, code="forbidden", message="this operation needs a key granted on every collection; "
                                                 "this key is limited to some")
    if RANK[have] < RANK[role]:
        abort(403, code="forbidden", message=f"this operation needs the {role} role; the key has {have}")


def visible_collections() -> frozenset[str] | None:
    """The collections the caller may see (None: all), for views that list or stream."""
    found = principal()
    return found.visible if found is not None else None


def require_grant(collection: str | None, role: str, hidden: str | None) -> None:
    """For a thing of `collection` (a job, a new collection): 404 with `hidden` as the message when the
    caller's key has no grant there (the thing looks absent), 403 when `hidden` is None or when the
    grant's role is below `role`."""
    found = principal()
    if found is None:
        return  # a public route: nothing to narrow
    have = found.role_on(collection)
    if have is None and hidden is not None:
        abort(404, message=hidden)
    if have is None or RANK[have] < RANK[role]:
        where = f"collection {collection!r}" if collection else "this"
        abort(403, code="forbidden", message=f"this operation needs the {role} role on {where}; the key has "
                                             f"{have or 'no grant there'}")


def basic_allowed() -> bool:
    """Basic credentials count only on the admin page and the event stream it opens."""
    path = request.path
    if path == "/admin" or path.startswith("/admin/"):
        return True
    return path == "/v1/events" and request.method in ("GET", "HEAD")


def _presented_key() -> str | None:
    return presented_key(request.headers.get("Authorization", ""), basic_allowed())


def presented_key(header: str, basic: bool) -> str | None:
    """The key an Authorization header's value carries: a Bearer token, or with `basic` (where Basic
    counts) the password of Basic credentials."""
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return value
    if scheme == "basic" and value and basic:
        try:
            _, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


CSRF_HEADER = "X-CSRF-Token"
# The admin page's session: a random value in an HttpOnly, SameSite=Strict cookie that only /admin sees.
CSRF_COOKIE = "swapline_admin_session"
CSRF_MAX_AGE = 8 * 3600  # seconds a page's token works; reload the page for a new one
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _csrf_mac(principal: Principal | None, ring: KeyRing, session: str, expires: int) -> str:
    # Keyed with the caller's key, so another site can neither forge a token nor use one for another key.
    secret = ring.secret_for(principal.key_id) if principal else b"open"
    message = f"swapline-admin-csrf|{session}|{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:40]


def csrf_token(principal: Principal | None, ring: KeyRing, session: str, now: float | None = None) -> str:
    """A token for the admin page's own POSTs: valid with this session cookie only, for CSRF_MAX_AGE."""
    expires = int(now if now is not None else time.time()) + CSRF_MAX_AGE
    return f"{expires}.{_csrf_mac(principal, ring, session, expires)}"


def csrf_valid(token: str, principal: Principal | None, ring: KeyRing, session: str,
               now: float | None = None) -> bool:
    expires, _, mac = token.partition(".")
    if not session or not re.fullmatch(r"[0-9]{1,12}", expires) \
            or int(expires) < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac.encode(), _csrf_mac(principal, ring, session, int(expires)).encode())


def admin_session(response: Response) -> str:
    """The page's token, for a response that renders the admin page: the browser's session cookie is
    kept (other tabs' tokens go on working) or a new one is set on `response`."""
    session = request.cookies.get(CSRF_COOKIE, "")
    if len(session) < 32:
        session = secrets.token_urlsafe(32)
        response.set_cookie(CSRF_COOKIE, session, max_age=CSRF_MAX_AGE, path="/admin", httponly=True,
                            samesite="Strict", secure=request.is_secure)
    return csrf_token(principal(), current_app.extensions["swapline_auth"], session)


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
    if not _same_origin() or not csrf_valid(token, principal(), ring, request.cookies.get(CSRF_COOKIE, "")):
        abort(403, code="csrf_refused", message=f"admin actions must come from the admin page itself (same origin, "
                                                f"with its {CSRF_HEADER}); reload /admin and try again")


class KeyRing:
    """The configured keys and their grants; lookups compare every key in constant time."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]):
        self._pairs = [(key.encode(), grant) for key, grant in pairs]

    @property
    def open(self) -> bool:
        return not self._pairs

    def secret_for(self, key_id_: str) -> bytes:
        """The key whose id is `key_id_` (as bytes), to derive per-key values from."""
        for known, _role in self._pairs:
            if key_id(known.decode()) == key_id_:
                return known
        return b"unknown"

    def principal_of(self, key: str) -> Principal | None:
        """The key's principal, with every grant its entries give it; None for an unknown key."""
        presented = key.encode()
        matched = [grant for known, grant in self._pairs if hmac.compare_digest(known, presented)]
        return principal_from(key_id(key), matched) if matched else None


def principal_from(key_id_: str, grant_texts: Iterable[str]) -> Principal:
    everywhere: str | None = None
    grants: dict[str, str] = {}
    for text in grant_texts:
        role, collections = parse_grant(text)
        if collections is None:
            everywhere = _higher(everywhere, role)
        for name in collections or ():
            grants[name] = _higher(grants.get(name), role) or role
    return Principal(key_id_, everywhere, grants)


class FailureLimit:
    """Failed authentications per client address per minute (a moving window kept in this process).
    Past the limit every request of that address that carries a key gets 429 until the window has
    room again, a right key included: otherwise the limit would not slow guessing at all."""

    def __init__(self, per_minute: int):
        self._item = RateLimitItemPerMinute(per_minute) if per_minute > 0 else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def wait(self, client: str) -> int:
        """Seconds until `client` may try a key again; 0 when it may now."""
        if self._item is None or self._limiter.test(self._item, "auth-failures", client):
            return 0
        reset, _remaining = self._limiter.get_window_stats(self._item, "auth-failures", client)
        return max(1, math.ceil(reset - time.time()))

    def failed(self, client: str) -> None:
        if self._item is not None:
            self._limiter.hit(self._item, "auth-failures", client)


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
        if current_app.extensions["swapline_auth_mode"] != "open":  # SWAPLINE_AUTH=open: any Host, on purpose
            check_host()
        g.swapline_principal = OPEN
        check_admin_csrf()
        return
    key = _presented_key()
    found = _known(ring, key) if key else None
    if role is None:
        if found is not None:
            g.swapline_principal = found
        return
    if key is None:
        basic = request.headers.get("Authorization", "").lower().startswith("basic ")
        message = ("Basic credentials are accepted only by the admin page and its event stream; send "
                   "Authorization: Bearer <key>" if basic else "an API key is required: Authorization: Bearer <key>")
        abort(401, code="unauthorized", message=message, headers=_challenge())
    if found is None:
        abort(401, code="unauthorized", message="the API key is not valid",
              headers=_challenge("invalid_token"))
    authorize(found, role)
    g.swapline_principal = found
    check_admin_csrf()


def _known(ring: KeyRing, key: str) -> Principal | None:
    """The key's principal; 429 while its client address is past the failure limit, and a failure
    counted (and logged) for an unknown key."""
    limit: FailureLimit = current_app.extensions["swapline_auth_failures"]
    client = request.remote_addr or "unknown"
    wait = limit.wait(client)
    if wait:
        log.warning("event=auth.throttled key_id=%s client=%s path=%s retry_after=%d", key_id(key), client,
                    request.path, wait)
        abort(429, code="too_many_failures", message=f"too many failed authentications from this address; "
                                                     f"retry after {wait} s", headers={"Retry-After": str(wait)})
    found = ring.principal_of(key)
    if found is None:
        limit.failed(client)
        log.warning("event=auth.refused key_id=%s client=%s path=%s", key_id(key), client, request.path)
    return found


def check_host() -> None:
    """An API without keys answers only requests addressed to it by a loopback name or an allowed host:
    a page on another site that re-binds its own name to 127.0.0.1 sends its own name as the Host."""
    host = host_of(request.host)
    if not host_allowed(host, current_app.extensions["swapline_allowed_hosts"]):
        abort(403, code="host_refused", message=f"this API has no keys and answers only loopback hosts; "
                                                f"{host!r} is not one (SWAPLINE_ALLOWED_HOSTS adds names)")


def host_allowed(host: str, allowed: set[str]) -> bool:
    """Whether an API without keys answers a request addressed to `host` (see check_host)."""
    return is_loopback(host) or host in allowed


def plain_principal(app: Flask, authorization: str, host: str | None, client: str, collection: str,
                    role: str) -> Principal | None:
    """The caller of a request that needs `role` on `collection`, when this hook would let it in without a
    word: a known Bearer key with that role there (its address not throttled), or an API without keys
    addressed to an allowed host. None otherwise: then `authenticate` must see the request, since only it
    refuses, throttles, counts failures and logs them (webapp.api.searchlane hands such requests on)."""
    ring: KeyRing = app.extensions["swapline_auth"]
    if ring.open:
        if app.extensions["swapline_auth_mode"] == "open":
            return OPEN
        allowed = host is not None and host_allowed(host_of(host), app.extensions["swapline_allowed_hosts"])
        return OPEN if allowed else None
    key = presented_key(authorization, basic=False)
    if key is None or app.extensions["swapline_auth_failures"].wait(client):
        return None
    found = ring.principal_of(key)
    have = None if found is None else found.role_on(collection)
    return found if have is not None and RANK[have] >= RANK[role] else None


def principal() -> Principal | None:
    return g.get("swapline_principal")


def mode(app: Flask | None = None) -> str:
    """"open" (no keys configured) or "keys", for /readyz."""
    ring: KeyRing = (app or current_app).extensions["swapline_auth"]
    return "open" if ring.open else "keys"


def init_app(app: Flask, settings: Settings) -> None:
    ring = KeyRing(settings.api_keys)
    app.extensions["swapline_auth"] = ring
    app.extensions["swapline_auth_failures"] = FailureLimit(settings.auth_failures_per_minute)
    app.extensions["swapline_auth_mode"] = settings.auth
    app.extensions["swapline_allowed_hosts"] = {h.strip().strip("[]").lower()
                                                for h in settings.allowed_hosts.split(",") if h.strip()}
    app.before_request(authenticate)
    if ring.open:
        log.warning("event=auth.open message=%r", "SWAPLINE_API_KEYS is empty: the API accepts every request "
                    "without a key, addressed to a loopback host name only unless SWAPLINE_AUTH=open. Set "
                    "key:role pairs (roles read, write, admin) before exposing it.")
    else:
        grants = [parse_grant(grant) for _, grant in settings.api_keys]
        counts = {role: sum(1 for r, _ in grants if r == role) for role in ROLES}
        scoped = sum(1 for _, collections in grants if collections is not None)
        log.info("event=auth.keys %s scoped=%d", " ".join(f"{role}={n}" for role, n in counts.items()), scoped)


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
