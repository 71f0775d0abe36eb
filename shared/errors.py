"""Outcomes of domain work that the task layer maps to job states."""


class JobCanceled(Exception):
    """The job's cancel flag was seen at a step boundary."""


class LockBusy(Exception):
    """Another rebuild of the collection holds the lease; try again later (the job stays queued)."""


class JobInputError(Exception):
    """The job cannot succeed whatever the retries (missing collection, unreadable batch). `result`, when
    set, is kept on the failed job beside its error (what was found, for the client to read)."""

    result: dict | None = None


class RecallBelowFloor(JobInputError):
    """An approximate index would answer below the configured recall floor at any nprobe tried: the
    build is refused and the published version stays."""


class PublishGated(JobInputError):
    """A rebuild's new version failed the collection's quality gate (more canaries missed than on the
    published version plus `max_drop`: code `quality_gate`) or would shrink it by more than half or to
    nothing (`shrink_guard`) without `force`: it is not published and the pointer stays."""

    def __init__(self, code: str, message: str, result: dict):
        super().__init__(f"{code}: {message}")
        self.code, self.result = code, result


class TryAgain(Exception):
    """A transient failure of one attempt (a file that could not be read): the task is retried on
    its own, with a growing wait, before the job is failed."""


class RequestRefused(Exception):
    """A request refused before any work (a bound exceeded, a malformed filter, an index that cannot
    answer it): `status` and `code` are what the API answers, `errors` the per-field messages."""

    def __init__(self, status: int, code: str, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


class JobInProgress(Exception):
    """A job of `kind` that excludes another one is already queued or running (a second drop of a
    collection, an explicit rebuild while one is pending, a reconcile of a source being reconciled).
    The API answers 409 with code `<kind>_in_progress`, the `job_id` and its Location, in one place."""

    def __init__(self, kind: str, job_id: str, message: str):
        super().__init__(message)
        self.kind, self.job_id, self.message = kind, job_id, message

    @property
    def code(self) -> str:
        return f"{self.kind}_in_progress"
