"""The bounds of one request (shared.limits), checked directly: the status and code the API answers."""

from __future__ import annotations

import pytest

from shared.errors import RequestRefused
from shared.limits import check_documents, check_search
from shared.settings import Settings

BOUNDS = Settings(max_documents_per_batch=2, max_document_bytes=4, max_k=5, max_query_chars=10)


def doc(doc_id: str, text: str = "ok") -> dict:
    return {"id": doc_id, "text": text, "metadata": {}}


@pytest.mark.parametrize("documents, status, code", [
    ([doc("a"), doc("b"), doc("c")], 413, "batch_too_large"),
    ([doc("a"), doc("b", "ééé")], 413, "document_too_large"),  # 6 bytes of UTF-8, 3 characters
    ([doc("a"), doc("a")], 422, "invalid"),
])
def test_a_batch_past_a_bound_or_naming_an_id_twice_is_refused(documents, status, code):
    with pytest.raises(RequestRefused) as refused:
        check_documents(documents, BOUNDS)
    assert (refused.value.status, refused.value.code) == (status, code)


def test_a_batch_within_the_bounds_passes():
    check_documents([doc("a", "abcd"), doc("b")], BOUNDS)


def test_search_bounds_name_the_field():
    check_search("x" * 10, 5, BOUNDS)
    with pytest.raises(RequestRefused) as refused:
        check_search("x" * 11, 5, BOUNDS)
    assert refused.value.errors == {"query": ["at most 10 characters"]}


def test_worker_niceness_is_checked_at_start():
    from shared.settings import SettingsError, load_settings

    assert load_settings({"SWAPLINE_WORKER_NICE": "5"}).worker_nice == 5
    assert load_settings({}).worker_nice == 10
    for bad in ("20", "-1"):
        with pytest.raises(SettingsError, match="SWAPLINE_WORKER_NICE must be 0 to 19"):
            load_settings({"SWAPLINE_WORKER_NICE": bad})
