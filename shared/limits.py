"""The bounds one request may ask for (SWAPLINE_MAX_*), checked before any work; a request past one
raises RequestRefused with the status and code the API answers."""

from __future__ import annotations

import json

from shared.errors import RequestRefused
from shared.settings import Settings


def check_documents(documents: list[dict], settings: Settings) -> None:
    """A batch of at most SWAPLINE_MAX_DOCUMENTS_PER_BATCH documents (else 413 batch_too_large), each text
    at most SWAPLINE_MAX_DOCUMENT_BYTES bytes of UTF-8 (else 413 document_too_large), its metadata at most
    SWAPLINE_MAX_METADATA_BYTES bytes as JSON (else 422 metadata_too_large: it is copied into every chunk),
    no id twice (else 422 invalid: which of the two should win is the client's to say)."""
    if len(documents) > settings.max_documents_per_batch:
        raise RequestRefused(413, "batch_too_large", f"at most {settings.max_documents_per_batch} documents per batch")
    seen = set()
    for i, doc in enumerate(documents):
        if len(doc["text"].encode("utf-8")) > settings.max_document_bytes:
            raise RequestRefused(413, "document_too_large",
                                 f"documents[{i}].text exceeds {settings.max_document_bytes} bytes")
        if metadata_bytes(doc.get("metadata") or {}) > settings.max_metadata_bytes:
            raise RequestRefused(422, "metadata_too_large",
                                 f"documents[{i}].metadata exceeds {settings.max_metadata_bytes} bytes as JSON "
                                 "(SWAPLINE_MAX_METADATA_BYTES)")
        if doc["id"] in seen:
            raise RequestRefused(422, "invalid", f"document id {doc['id']!r} appears twice in the batch")
        seen.add(doc["id"])


def metadata_bytes(metadata: dict) -> int:
    """The size of a document's metadata as stored with each chunk (compact JSON, UTF-8)."""
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))


def check_search(query: str, k: int, settings: Settings) -> None:
    """`k` at most SWAPLINE_MAX_K and the query at most SWAPLINE_MAX_QUERY_CHARS characters (else 422)."""
    if k > settings.max_k:
        raise RequestRefused(422, "invalid", f"k must be at most {settings.max_k}",
                             {"k": [f"at most {settings.max_k}"]})
    if len(query) > settings.max_query_chars:
        raise RequestRefused(422, "invalid", f"query must be at most {settings.max_query_chars} characters",
                             {"query": [f"at most {settings.max_query_chars} characters"]})


# Canaries run twice in every rebuild (on the new and the published version), eval queries three times
# (once per mode) in one job: both are bounded so a request cannot make a rebuild or a job expensive.
MAX_CANARIES = 50
MAX_EVAL_QUERIES = 2000
MAX_EXPECT = 20  # entries (document ids or path prefixes) one query or canary may expect
MAX_EXPECT_CHARS = 1024


def check_queries(items: list[dict], field: str, settings: Settings, k: int | None = None) -> None:
    """Each item's query at most SWAPLINE_MAX_QUERY_CHARS characters and its (or the shared) `k` at most
    SWAPLINE_MAX_K (else 422 naming `field[i]`). Counts and entry sizes are the schema's."""
    for i, item in enumerate(items):
        wanted = item.get("k") or k or 1
        try:
            check_search(item["query"], wanted, settings)
        except RequestRefused as refused:
            raise RequestRefused(422, "invalid", f"{field}[{i}]: {refused.message}",
                                 {f"{field}[{i}]": [refused.message]}) from None
