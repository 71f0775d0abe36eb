"""Swapline's Python client: the REST API as a few calls, for scripts, notebooks and tools.

    from webapp.client import Client, JobFailed

    with Client("http://127.0.0.1:8000", api_key=None) as swapline:
        swapline.create_collection("handbook")
        job = swapline.add_documents("handbook", [{"id": "rotate.md", "text": "# Rotating keys\\n..."}])
        swapline.wait(job["id"], on_update=lambda j: print(j["state"], j.get("progress")))
        rebuild = swapline.job(job["id"])["result"]["rebuild_job_id"]
        version = swapline.wait(rebuild)["result"]["version"]   # published
        swapline.wait_served("handbook", version)   # served by every API process: searchable
        for hit in swapline.search("handbook", "how do we rotate credentials", k=3)["hits"]:
            print(hit["score"], hit["doc_id"], hit["heading_path"])
        for event in swapline.events(collection="handbook"):   # live, until you break
            print(event.type, event.data.get("job_id"))

Requests are retried on connection errors, 429, 502, 503 and 504 (honouring Retry-After), and every
job-creating request carries an Idempotency-Key, so a retry never creates a second job. Errors are
`ApiError` (the API answered an error; `.status`, `.code`, `.body`), `RebuildBusy` (a rebuild is
already queued or running: `.job_id`), `ApiUnreachable`, `JobFailed` (`.job`), `NotServed` (a
published version some API process did not load in time: `.behind`, `.load_failures`) and
`InvalidArgument` (a collection name, job id or document id refused before any request: it could
reach another route).

It imports only requests (no Flask, Celery, FAISS, numpy or torch), like the `swapline` command built
on it.

| module | what lives there |
| --- | --- |
| `client` | `Client`: every call, the retry policy, idempotency keys, following a job |
| `events` | the event stream as an iterator of `Event`, resumed with Last-Event-ID |
| `jobs` | `job_fraction`: how far a job is, for progress displays |
| `errors` | the exceptions |
"""

from webapp.client.client import DEFAULT_URL, Client
from webapp.client.errors import (
    ApiError,
    ApiUnreachable,
    Interrupted,
    InvalidArgument,
    JobFailed,
    NotServed,
    RebuildBusy,
)
from webapp.client.events import Event
from webapp.client.jobs import job_fraction

__all__ = ["DEFAULT_URL", "ApiError", "ApiUnreachable", "Client", "Event", "Interrupted", "InvalidArgument",
           "JobFailed", "NotServed", "RebuildBusy", "job_fraction"]
