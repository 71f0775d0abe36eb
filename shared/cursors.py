"""Page cursors, one codec for every listing: the parts that name the last item of a page (a name, a
document id with the index version listed, a job's created_at and id), as URL-safe base64 of a JSON
array. A cursor must decode and encode back to itself, so a cursor a client altered or made up is
refused (ValueError), never half-read.
"""

from __future__ import annotations

import base64
import json
import math

MAX_CURSOR_CHARS = 4096


def encode(*parts: str | float) -> str:
    raw = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, *types: type) -> list:
    """The parts of `cursor`, each of the given type (in order: str non-empty, float finite, int 0 or
    more); ValueError when it is not one of ours."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        parts = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a valid cursor") from exc
    if not isinstance(parts, list) or len(parts) != len(types) or encode(*parts) != cursor:
        raise ValueError("not a valid cursor")
    for part, kind in zip(parts, types, strict=True):
        number = kind is float and isinstance(part, int | float) and not isinstance(part, bool)
        count = kind is int and isinstance(part, int) and not isinstance(part, bool) and part >= 0
        if not (number and math.isfinite(part)) and not count and not (kind is str and isinstance(part, str) and part):
            raise ValueError("not a valid cursor")
    return [float(p) if kind is float else p for p, kind in zip(parts, types, strict=True)]
