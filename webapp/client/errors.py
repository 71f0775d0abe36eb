"""What the client raises, each with a message fit to show a user."""

from __future__ import annotations


class ApiUnreachable(Exception):
    """Nothing answered at the API's URL (not running, wrong port, timeout), after the retries."""


class ApiError(Exception):
    """The API answered an error (after the retries, for statuses worth retrying).

    `status` is the HTTP status, `code` the machine-readable code of the problem document
    (e.g. `not_found`, `queue_full`), `body` the whole document."""

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


class JobFailed(Exception):
    """A followed job ended failed or canceled; `job` is its last state."""

    def __init__(self, job: dict):
        self.job = job
        reason = job.get("error") or "no error recorded"
        super().__init__(f"{job.get('kind', 'job')} job {job['id']} {job['state']}: {reason}")


class NotServed(TimeoutError):
    """A published version was not served by every live API process in time: `behind` maps each
    process still on an older version (or none) to it, `load_failures` says which could not load it."""

    def __init__(self, collection: str, version: int, behind: dict, load_failures: list, seconds: float):
        self.collection, self.version = collection, version
        self.behind, self.load_failures = behind, load_failures
        failed = "; ".join(f"{f.get('replica')} could not load v{f.get('version')}: {f.get('error')}"
                           for f in load_failures)
        who = f"{len(behind)} API process(es) did not serve it" if behind else "no live API process reported"
        super().__init__(f"{collection!r} v{version} is published but {who} within {seconds:g} s"
                         + (f" ({failed})" if failed else ""))


class Interrupted(Exception):
    """The caller asked to stop following (its `stop` event was set)."""


class InvalidArgument(ValueError):
    """A collection name, job id or document id the client refuses to put in a URL (it could reach
    another route); raised before any request is sent."""
