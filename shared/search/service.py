"""A search request over the version a process serves, from the request's body to its answer: the
bounds and the filter checked, the answer looked up in (and added to) the served version's cache, the
query's model checked against the index's, the engine called. What cannot be answered raises
RequestRefused with the status and code the API gives it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.errors import RequestRefused
from shared.index.embedders import Embedder, same_vector_space
from shared.index.parts import ServedVersion
from shared.limits import check_search
from shared.search.engine import KeywordUnavailable, search
from shared.search.filters import Filter, FilterError, parse_filter
from shared.search.shaping import MAX_ANSWER_TOKENS, candidates, fit_tokens, group_by_document
from shared.settings import Settings


class ResultCache(Protocol):
    """Answers computed from one served version, which lives and dies with it."""

    def get(self, key) -> dict | None: ...

    def put(self, key, value: dict) -> None: ...


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int
    mode: str
    filter: Filter | None
    key: tuple  # the answer's key in a served version's cache
    group_by: str | None = None  # "document": one result per document, chunks merged into passages
    max_tokens: int | None = None  # the answer's texts cut to this many model tokens

    @classmethod
    def from_body(cls, body: dict, settings: Settings) -> SearchRequest:
        """The request of a validated body (query, k, mode, filter, group_by, max_tokens); RequestRefused
        (422) past a bound or for a filter outside the grammar."""
        check_search(body["query"], body["k"], settings)
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and not 1 <= max_tokens <= MAX_ANSWER_TOKENS:
            raise RequestRefused(422, "invalid", f"max_tokens must be between 1 and {MAX_ANSWER_TOKENS}",
                                 {"max_tokens": [f"between 1 and {MAX_ANSWER_TOKENS}"]})
        try:
            flt = parse_filter(body.get("filter"))
        except FilterError as bad:
            raise RequestRefused(422, "invalid", str(bad), {"filter": bad.errors}) from None
        key = (body["query"], body["k"], body["mode"], json.dumps(body.get("filter"), sort_keys=True),
               body.get("group_by"), max_tokens)
        return cls(body["query"], body["k"], body["mode"], flt, key, body.get("group_by"), max_tokens)


@dataclass(frozen=True)
class Found:
    result: dict  # the answer's body
    version: int | None  # the index version that answered (None: this process serves none yet)
    cached: bool
    embed_s: float = 0.0  # spent embedding the query
    search_s: float = 0.0  # spent searching and shaping the answer, the embedding excluded

    def server_timing(self) -> str:
        """The Server-Timing header's value: where the server's time went, in milliseconds."""
        return f"embed;dur={self.embed_s * 1000:.2f}, search;dur={self.search_s * 1000:.2f}"


def nothing_served(request: SearchRequest) -> Found:
    """The answer while this process serves no version of the collection: no hits, never an error."""
    return Found(_shaped({"index_version": None, "mode": request.mode, "scanned": 0, "matched_documents": None,
                          "hits": []}, request, None), None, False)


def _shaped(result: dict, request: SearchRequest, embedder: Embedder | None) -> dict:
    """`result` with its hits grouped by document and cut to `max_tokens` as the request asks."""
    if request.group_by:
        result["group_by"] = request.group_by
        result["hits"] = group_by_document(result["hits"], request.k)
    if request.max_tokens is not None:
        if embedder is None:
            result.update(tokens=0, truncated=False)
        else:
            result["hits"], result["tokens"], result["truncated"] = fit_tokens(
                result["hits"], request.max_tokens, embedder.tokenizer, bool(request.group_by))
    return result


def search_version(version: ServedVersion, cache: ResultCache, request: SearchRequest, embedder: Embedder) -> Found:
    """The answer from `version` (the caller holds that reference for the whole query, so a swap meanwhile
    changes nothing), from `cache` when it holds it. RequestRefused (409) when the index was built with
    another model (vector, hybrid) or has no keyword index (keyword)."""
    cached = cache.get(request.key)
    if cached is not None:
        return Found(cached, version.version, True)
    # Runtimes of one model (torch, ONNX fp32/int8) embed into one space, so a version built by one
    # answers queries embedded by another (tests/bench/embed.py measures hits@5 across them).
    if request.mode != "keyword" and not same_vector_space(version.manifest["model"], embedder.model_id):
        raise RequestRefused(409, "model_mismatch", f"index v{version.version} was built with "
                             f"{version.manifest['model']}; this API embeds queries with {embedder.model_id}")
    started, embedded = time.perf_counter(), [0.0]

    def embed(text: str) -> np.ndarray:
        began = time.perf_counter()
        try:
            return embedder.embed([text])[0]
        finally:
            embedded[0] += time.perf_counter() - began

    try:
        depth = candidates(request.k) if request.group_by else request.k
        answer = search(version, request.query, depth, request.mode, request.filter, embed)
    except KeywordUnavailable as missing:
        raise RequestRefused(409, "keyword_index_missing", str(missing)) from None
    result = _shaped({"index_version": version.version, "mode": answer.mode, "scanned": answer.scanned,
                      "matched_documents": answer.matched_documents, "hits": answer.hits}, request, embedder)
    cache.put(request.key, result)
    return Found(result, version.version, False, embedded[0], time.perf_counter() - started - embedded[0])
