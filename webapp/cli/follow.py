"""Submitting many batches over the REST API with a bounded number in flight, polling the jobs to
completion, then waiting for the rebuilds they asked for. Shared by `swapline ingest` and the sample
load of `make run`; the calls themselves are `webapp.client`'s."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shared.jobstates import SUCCEEDED, TERMINAL
from webapp.client import ApiError, Client, JobFailed, job_fraction
from webapp.client.client import pause

# progress(done, total, note, force): done may be fractional (a running job's share).
Progress = Callable[[float, int, str, bool], None]


@dataclass
class IngestSummary:
    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    jobs: int = 0
    rebuild_jobs: list[str] = field(default_factory=list)
    index_version: int | None = None
    seconds: float = 0.0


class IngestRun:
    """Submits batches to one collection, keeping at most `max_inflight` unfinished jobs at a time (so a
    big folder neither floods the queue nor waits to be fully posted before progress shows)."""

    def __init__(self, client: Client, collection: str, batches: Iterable[list[dict]], total_docs: int, *,
                 rebuild: bool = True, max_inflight: int = 4, poll: float = 0.5,
                 progress: Progress | None = None, stop: threading.Event | None = None,
                 on_submit: Callable[[dict, int], None] | None = None):
        self.client, self.collection, self.total = client, collection, total_docs
        self.batches = iter(batches)
        self.rebuild, self.max_inflight, self.poll = rebuild, max(1, max_inflight), poll
        self.progress = progress or (lambda done, total, note, force: None)
        self.stop = stop
        self.on_submit = on_submit
        self.summary = IngestSummary()

    def run(self) -> IngestSummary:
        started = time.monotonic()
        inflight: dict[str, tuple[int, dict]] = {}  # job id -> (documents, last seen job)
        submitted = 0
        held: list[dict] | None = None  # a batch the API asked us to send again later
        resume_at = 0.0
        exhausted = False
        while True:
            while not exhausted and len(inflight) < self.max_inflight and time.monotonic() >= resume_at:
                batch = held or next(self.batches, None)
                held = None
                if batch is None:
                    exhausted = True
                    break
                try:
                    job = self.client.add_documents(self.collection, batch, self.rebuild)
                except ApiError as exc:
                    if exc.status != 503 or exc.retry_after is None:
                        raise
                    # The queue is full (back-pressure): keep following our jobs and send it again later.
                    held, resume_at = batch, time.monotonic() + exc.retry_after
                    break
                inflight[job["id"]] = (len(batch), job)
                submitted += 1
                if self.on_submit:
                    self.on_submit(job, len(batch))
            if not inflight and held is None:
                break
            pause(self.stop, self.poll)
            finished = False
            for job_id, (count, _) in list(inflight.items()):
                job = self.client.job(job_id)
                inflight[job_id] = (count, job)
                if job["state"] not in TERMINAL:
                    continue
                if job["state"] != SUCCEEDED:
                    raise JobFailed(job)
                del inflight[job_id]
                finished = True
                self._count(count, job)
            running = sum(count * job_fraction(job) for count, job in inflight.values())
            self.progress(self.summary.documents + running, self.total,
                          f"jobs {self.summary.jobs}/{submitted}", finished)
        self.progress(self.summary.documents, self.total, f"jobs {self.summary.jobs}/{submitted}", True)
        if self.rebuild:
            self._wait_rebuilds()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _count(self, documents: int, job: dict) -> None:
        result = job.get("result") or {}
        self.summary.documents += documents
        self.summary.chunks += int(result.get("chunks", 0))
        self.summary.embedded += int(result.get("embedded", 0))
        self.summary.jobs += 1
        rebuild_id = result.get("rebuild_job_id")
        if rebuild_id and rebuild_id not in self.summary.rebuild_jobs:
            self.summary.rebuild_jobs.append(rebuild_id)

    def _wait_rebuilds(self) -> None:
        """Wait for every rebuild the batches asked for (rebuilds coalesce, so there are few), then for
        every API process to serve the newest: it holds all the documents."""
        for job_id in self.summary.rebuild_jobs:
            job = self.client.wait(job_id, poll=self.poll, stop=self.stop)
            version = (job.get("result") or {}).get("version")
            if version is not None:
                self.summary.index_version = max(version, self.summary.index_version or 0)
        if self.summary.index_version is not None:
            self.client.wait_served(self.collection, self.summary.index_version, stop=self.stop)
