"""Search filters: a small grammar over document metadata, evaluated once per document.

A filter is a JSON object; every entry must hold (AND):

    "metadata.KEY": VALUE            metadata[KEY] equals VALUE (KEY is everything after "metadata.")
    "metadata.KEY": {"in": [V, ...]} metadata[KEY] equals one of the values
    "type": VALUE | {"in": [...]}    the document's type: metadata.type, else the extension of its
                                     path, source or id (what collection status counts by type)
    "source": VALUE | {"in": [...]}  metadata.source
    "path_prefix": "PREFIX"          metadata.path starts with PREFIX (the document id when it has no path)

VALUE is a string, number, boolean or null. When the metadata value is a list (tags), the entry holds
if any element equals. Booleans equal only booleans (true is not 1). Anything else (an unknown key or
operator, a bare list, a nested object) is a FilterError, which the API answers with 422.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

METADATA_PREFIX = "metadata."
FIELDS = ("type", "source", "path_prefix")
OPERATORS = ("in",)
MAX_CLAUSES = 32
MAX_IN_VALUES = 1000
SCALARS = (str, int, float, bool, type(None))


class FilterError(ValueError):
    """A filter outside the grammar; `errors` maps the offending key to messages (the 422 body)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"filter {key!r}: {message}")
        self.errors = {key: [message]}


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _holds(actual, wanted: tuple) -> bool:
    values = actual if isinstance(actual, list) else [actual]
    return any(_same(v, w) for v in values for w in wanted)


def _values(key: str, raw) -> tuple:
    """The accepted values of one entry: a scalar, or {"in": [scalars]}."""
    if isinstance(raw, SCALARS):
        return (raw,)
    if isinstance(raw, dict):
        if len(raw) != 1:
            raise FilterError(key, f"an operator object has exactly one operator, one of {list(OPERATORS)}")
        op, values = next(iter(raw.items()))
        if op not in OPERATORS:
            raise FilterError(key, f"unknown operator {op!r}; operators: {list(OPERATORS)}")
        if not isinstance(values, list) or not values or len(values) > MAX_IN_VALUES:
            raise FilterError(key, f"'in' takes a list of 1 to {MAX_IN_VALUES} values")
        if not all(isinstance(v, SCALARS) for v in values):
            raise FilterError(key, "'in' values are strings, numbers, booleans or null")
        return tuple(values)
    if isinstance(raw, list):
        raise FilterError(key, 'a list needs an operator: {"in": [...]}')
    raise FilterError(key, "a value is a string, number, boolean, null or {\"in\": [...]}")


@dataclass(frozen=True)
class Filter:
    clauses: tuple[Callable[[dict], bool], ...]
    spec: dict

    def __call__(self, document: dict) -> bool:
        """Whether a documents-table entry (id, type, metadata) passes every clause."""
        return all(clause(document) for clause in self.clauses)


def _metadata_clause(name: str, wanted: tuple) -> Callable[[dict], bool]:
    def clause(doc: dict) -> bool:
        meta = doc.get("metadata") or {}
        return name in meta and _holds(meta[name], wanted)
    return clause


def _type_clause(wanted: tuple) -> Callable[[dict], bool]:
    return lambda doc: _holds(doc["type"], wanted)


def _path_clause(prefix: str) -> Callable[[dict], bool]:
    def clause(doc: dict) -> bool:
        path = (doc.get("metadata") or {}).get("path")
        return (path if isinstance(path, str) else doc["id"]).startswith(prefix)
    return clause


def parse_filter(spec) -> Filter | None:
    """A Filter for a search body's "filter" (None for no filter or an empty one); raises FilterError."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise FilterError("filter", "a filter is a JSON object")
    if len(spec) > MAX_CLAUSES:
        raise FilterError("filter", f"at most {MAX_CLAUSES} entries")
    clauses: list[Callable[[dict], bool]] = []
    for key, raw in spec.items():
        if key == "path_prefix":
            if not isinstance(raw, str):
                raise FilterError(key, "path_prefix is a string")
            clauses.append(_path_clause(raw))
        elif key == "type":
            clauses.append(_type_clause(_values(key, raw)))
        elif key == "source":
            clauses.append(_metadata_clause("source", _values(key, raw)))
        elif key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX):
            clauses.append(_metadata_clause(key[len(METADATA_PREFIX):], _values(key, raw)))
        else:
            raise FilterError(key, f"unknown filter key; keys are {list(FIELDS)} or 'metadata.<key>'")
    return Filter(tuple(clauses), spec) if clauses else None
