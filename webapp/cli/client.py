"""A small client for Swapline's REST API, used by the `swapline` CLI and by `make run`.

It turns transport failures and error answers into two exceptions whose text is fit to show a user:
`ApiUnreachable` (nothing answers at the URL) and `ApiError` (the API answered an error body
`{"code", "message", "errors"?}`).
"""

from __future__ import annotations

from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiUnreachable(Exception):
    """Nothing answered at the API's URL (not running, wrong port, timeout)."""


class ApiError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, code: str, message: str, body: dict | None = None,
                 retry_after: float | None = None):
        self.status, self.code, self.message, self.body = status, code, message, body or {}
        self.retry_after = retry_after  # seconds, from a Retry-After header (a full queue's 503)
        super().__init__(f"{message} (HTTP {status} {code})")

    def details(self) -> str:
        """The message plus per-field validation messages, on one line."""
        errors = self.body.get("errors")
        if not errors:
            return str(self)
        return f"{self} {errors}"


class RebuildBusy(ApiError):
    """POST /rebuild (or a source's /reconcile) answered 409: one is queued or running; `job_id` names it."""

    @property
    def job_id(self) -> str | None:
        return self.body.get("job_id")


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "swapline-cli"
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            resp = self.http.request(method, url, timeout=self.timeout, **kw)
        except requests.ConnectionError as exc:
            raise ApiUnreachable(
                f"cannot reach the Swapline API at {self.base_url} (connection refused); "
                "is it running? Start it with `make run` or point SWAPLINE_URL at it") from exc
        except requests.Timeout as exc:
            raise ApiUnreachable(
                f"the Swapline API at {self.base_url} did not answer within {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise ApiUnreachable(f"request to {url} failed: {exc}") from exc
        if resp.status_code not in ok:
            raise _error_from(resp)
        return resp

    # resources

    def ready(self) -> bool:
        """/readyz: Redis answers and the index watcher has synced (and warmed the model)."""
        try:
            return self.request("GET", "/readyz").status_code == 200
        except (ApiUnreachable, ApiError):
            return False

    def alive(self) -> bool:
        """/healthz: the process serves HTTP (it takes jobs before it is ready to search)."""
        try:
            return self.request("GET", "/healthz").status_code == 200
        except (ApiUnreachable, ApiError):
            return False

    def collection(self, name: str) -> dict:
        return self.request("GET", f"/v1/collections/{name}").json()

    def create_collection(self, name: str) -> bool:
        """True when created, False when it already existed."""
        resp = self.request("POST", "/v1/collections", ok=(201, 409), json={"name": name})
        return resp.status_code == 201

    def submit(self, name: str, documents: list[dict], rebuild: bool = True) -> dict:
        return self.request("POST", f"/v1/collections/{name}/documents", ok=(202,),
                            json={"documents": documents, "rebuild": rebuild}).json()

    def job(self, job_id: str) -> dict:
        # 202 while queued or running, 200 once finished: both carry the job.
        return self.request("GET", f"/v1/jobs/{job_id}", ok=(200, 202)).json()

    def jobs(self, **filters: Any) -> dict:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/jobs", params=params).json()

    def search(self, name: str, query: str, k: int = 10) -> dict:
        return self.request("POST", f"/v1/collections/{name}/search", json={"query": query, "k": k}).json()

    def rebuild(self, name: str) -> dict:
        return self.request("POST", f"/v1/collections/{name}/rebuild", ok=(202,)).json()

    def add_source(self, name: str, path: str, watch: bool = False, include: list[str] | None = None,
                   exclude: list[str] | None = None, prefix: str = "") -> dict:
        body = {"path": path, "watch": watch, "include": include or [], "exclude": exclude or [], "prefix": prefix}
        return self.request("POST", f"/v1/collections/{name}/sources", ok=(202,), json=body).json()

    def sources(self, name: str) -> list[dict]:
        return self.request("GET", f"/v1/collections/{name}/sources").json()["sources"]

    def reconcile(self, name: str, source_id: str) -> dict:
        return self.request("POST", f"/v1/collections/{name}/sources/{source_id}/reconcile", ok=(202,)).json()

    def remove_source(self, name: str, source_id: str) -> dict:
        return self.request("DELETE", f"/v1/collections/{name}/sources/{source_id}", ok=(202,)).json()


def _error_from(resp: requests.Response) -> ApiError:
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
    code, message = str(body.get("code") or "error"), str(body.get("message") or resp.reason)
    return cls(resp.status_code, code, message, body, retry_after)
