"""The names clients and workers pass around, and the one pattern each must match.

`\\Z`, not `$`: `$` also matches before a trailing newline, which would let "docs\\n" through. The
OpenAPI document states the same patterns (JSON Schema has no `\\Z`; the API's validators use these).
"""

from __future__ import annotations

import re

COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}\Z"
COLLECTION_NAME_RULE = "1 to 64 of lowercase letters, digits, _ and -, starting with a letter or digit"
JOB_ID_PATTERN = r"^[0-9a-f]{32}\Z"
# A snapshot: when it was taken (UTC, sortable) and 8 random hex digits.
SNAPSHOT_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}\Z"

COLLECTION_NAME = re.compile(COLLECTION_NAME_PATTERN)
JOB_ID = re.compile(JOB_ID_PATTERN)
SNAPSHOT_ID = re.compile(SNAPSHOT_ID_PATTERN)
# A job id anywhere inside a longer text (a Celery message's argsrepr, a staged file name).
JOB_ID_IN_TEXT = re.compile(r"[0-9a-f]{32}")


def is_collection_name(value: object) -> bool:
    return isinstance(value, str) and bool(COLLECTION_NAME.match(value))


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(JOB_ID.match(value))


def is_snapshot_id(value: object) -> bool:
    return isinstance(value, str) and bool(SNAPSHOT_ID.match(value))


def openapi_pattern(pattern: str) -> str:
    """The pattern as JSON Schema writes it (`$` for `\\Z`)."""
    return pattern.removesuffix(r"\Z") + "$"
