"""Search filters: a small grammar over document metadata, evaluated column by column over a version's
documents table.

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

Cost is bounded, whatever the body: at most MAX_CLAUSES entries, MAX_IN_VALUES values in one `in` and
MAX_FILTER_VALUES values in the whole filter (a filter past a bound is a FilterError, so a 422). Values
become hash keys once, at parse time. A format-1 version (DocTable) looks each one up in its value maps
and path prefixes by bisection, so it costs the values it names plus the documents they match, never
documents x values; a format-2 version (VersionDocuments) matches them against its parts' facet columns
with vectorized compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.index.doctable import DocTable, value_key
from shared.index.parttables import VersionDocuments

METADATA_PREFIX = "metadata."
FIELDS = ("type", "source", "path_prefix")
OPERATORS = ("in",)
MAX_CLAUSES = 32
MAX_IN_VALUES = 1000
MAX_FILTER_VALUES = 2000  # over all entries of one filter
SCALARS = (str, int, float, bool, type(None))


class FilterError(ValueError):
    """A filter outside the grammar; `errors` maps the offending key to messages (the 422 body)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"filter {key!r}: {message}")
        self.errors = {key: [message]}


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
class Clause:
    field: str | None  # a metadata key, None for the document's type; unused for a prefix
    keys: frozenset  # value_key of each accepted value
    prefix: str | None = None  # a path_prefix clause

    def holds(self, document: dict) -> bool:
        if self.prefix is not None:
            path = (document.get("metadata") or {}).get("path")
            return (path if isinstance(path, str) else document["id"]).startswith(self.prefix)
        if self.field is None:
            return value_key(document["type"]) in self.keys
        meta = document.get("metadata") or {}
        if self.field not in meta:
            return False
        value = meta[self.field]
        return any(value_key(v) in self.keys for v in (value if isinstance(value, list) else (value,)))


@dataclass(frozen=True)
class Filter:
    clauses: tuple[Clause, ...]
    spec: dict

    def __call__(self, document: dict) -> bool:
        """Whether a documents-table entry (id, type, metadata) passes every clause: the grammar's meaning one
        document at a time, the reference the column-wise `select` is tested against."""
        return all(clause.holds(document) for clause in self.clauses)

    def select(self, table: DocTable | VersionDocuments) -> tuple[int, np.ndarray]:
        """How many documents of `table` pass, and the boolean mask over its rows: each kind of table
        evaluates the clauses column-wise its own way (DocTable over value maps, VersionDocuments over
        its parts' facets)."""
        return table.select(self)


def parse_filter(spec) -> Filter | None:
    """A Filter for a search body's "filter" (None for no filter or an empty one); raises FilterError."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise FilterError("filter", "a filter is a JSON object")
    if len(spec) > MAX_CLAUSES:
        raise FilterError("filter", f"at most {MAX_CLAUSES} entries")
    clauses: list[Clause] = []
    total = 0
    for key, raw in spec.items():
        if key == "path_prefix":
            if not isinstance(raw, str):
                raise FilterError(key, "path_prefix is a string")
            clauses.append(Clause(None, frozenset(), raw))
            continue
        if key == "type":
            field = None
        elif key == "source":
            field = "source"
        elif key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX):
            field = key[len(METADATA_PREFIX):]
        else:
            raise FilterError(key, f"unknown filter key; keys are {list(FIELDS)} or 'metadata.<key>'")
        values = _values(key, raw)
        total += len(values)
        if total > MAX_FILTER_VALUES:
            raise FilterError("filter", f"at most {MAX_FILTER_VALUES} values in all entries together")
        clauses.append(Clause(field, frozenset(k for k in map(value_key, values) if k is not None)))
    return Filter(tuple(clauses), spec) if clauses else None
