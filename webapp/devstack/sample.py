"""The demo collection `make run` loads on first start: Kubernetes enhancement proposals shipped in
`webapp/devstack/sample_corpus/` (see NOTICE.md there), posted over the REST API like any client would.

With the real model the full sample takes minutes to embed, so a small first batch is posted alone and
followed until it is searchable; the rest then loads in the background while the stack is usable.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from webapp.cli.batching import doc_bytes, make_batches
from webapp.cli.follow import IngestRun
from webapp.cli.progress import ProgressBar
from webapp.client import ApiError, Client, Interrupted

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_corpus"
COLLECTION = "keps"
EXAMPLE_QUERY = "how does the scheduler decide which node a pod runs on"
# One or two KEPs, a few dozen chunks: seconds of MiniLM on two cores, so the demo is searchable early.
FIRST_BATCH_BYTES = 20 * 1024
FIRST_SIG = "sig-scheduling"
BATCH_DOCS = 20


def sample_documents(limit: int | None = None) -> list[dict]:
    """The sample in load order; `limit` keeps the first few (fast tests)."""
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    entries = manifest["files"][:limit] if limit is not None else manifest["files"]
    return [{"id": e["path"], "text": (SAMPLE_DIR / e["path"]).read_text(encoding="utf-8"),
             "metadata": {"source": e["path"], **e.get("metadata", {})}} for e in entries]


def split_first(docs: list[dict], first_bytes: int = FIRST_BATCH_BYTES) -> tuple[list[dict], list[dict]]:
    """A first batch of about `first_bytes` (at least one document) and the rest. KEPs of the SIG the
    example query is about go first, so the first answers a newcomer sees are on topic."""
    ranked = sorted(range(len(docs)), key=lambda i: docs[i]["metadata"].get("sig") != FIRST_SIG)
    taken: set[int] = set()
    size = 0
    for i in ranked:
        size += doc_bytes(docs[i])
        if taken and size > first_bytes:
            break
        taken.add(i)
    return [docs[i] for i in sorted(taken)], [d for i, d in enumerate(docs) if i not in taken]


def _wait(predicate: Callable[[], object], stop: threading.Event, timeout: float, what: str,
          poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        if stop.wait(poll):
            raise Interrupted()


class SampleLoader:
    """Ensures the sample collection exists and is searchable, reporting through `say`."""

    def __init__(self, client: Client, say: Callable[[str], None], stop: threading.Event,
                 limit: int | None = None, poll: float = 0.5):
        self.client, self.say, self.stop, self.poll = client, say, stop, poll
        self.docs = sample_documents(limit)

    def wait_api(self, ready: bool, timeout: float = 180.0) -> None:
        """Wait until the API serves HTTP, or with `ready` until it can also search. Submitting needs
        only the former, so the worker loads its model while the API still warms its own."""
        check, what = (self.client.ready, "/readyz") if ready else (self.client.alive, "/healthz")
        _wait(check, self.stop, timeout, f"the API answering {what} with 200")

    def searchable(self) -> dict | None:
        """A real search answered by an index version with hits, or None."""
        try:
            answer = self.client.search(COLLECTION, EXAMPLE_QUERY, k=3)
        except ApiError:
            return None
        return answer if answer.get("index_version") is not None and answer.get("hits") else None

    def load_first(self) -> list[dict]:
        """Create the collection if needed and make it searchable; returns the documents still to load
        (none when an earlier run loaded them all)."""
        try:
            have = self.client.collection(COLLECTION)["documents"]
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.client.create_collection(COLLECTION)
            have = 0
            self.say(f"event=sample.create collection={COLLECTION} documents={len(self.docs)}")
        if have >= len(self.docs):
            self.say(f"event=sample.present collection={COLLECTION} documents={have}")
            _wait(self.searchable, self.stop, 600, "the sample collection becoming searchable")
            return []
        # A partial earlier load is simply posted again: documents already ingested keep their vectors
        # (the worker reuses vectors by content hash), so only the missing ones are embedded.
        first, rest = split_first(self.docs)
        self.say(f"event=sample.first_batch collection={COLLECTION} documents={len(first)} have={have}")
        IngestRun(self.client, COLLECTION, [first], len(first), poll=self.poll, stop=self.stop).run()
        _wait(self.searchable, self.stop, 600, "the sample collection becoming searchable", self.poll)
        return rest

    def load_rest(self, rest: list[dict]) -> None:
        if not rest:
            return
        started = time.monotonic()
        bar = ProgressBar("sample", "docs", stream=_SayStream(self.say), tty=False, interval=10.0)
        run = IngestRun(self.client, COLLECTION, make_batches(rest, BATCH_DOCS), len(rest), poll=self.poll,
                        stop=self.stop,
                        progress=lambda done, total, note, force: bar.update(done, total, note))
        summary = run.run()
        self.say(f"event=sample.loaded collection={COLLECTION} documents={len(self.docs)} "
                 f"chunks_added={summary.chunks} index_version={summary.index_version} "
                 f"seconds={time.monotonic() - started:.1f} -- the whole sample is searchable")


class _SayStream:
    """Lets a ProgressBar write its plain lines through the launcher's prefixed output."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.say(line)

    def flush(self) -> None:
        pass
