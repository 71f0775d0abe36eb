"""Data dirs and Redis dumps written by earlier releases load and serve with this one, on real processes.

tests/fixtures/format1 was written before layouts were recorded (layout 0, index format 1);
tests/fixtures/layout1 by the release that introduced layout 1 (index format 2). Each is copied (the
copy gets new file times, as a restored backup does), its Redis dump loaded into an empty Redis, and a
worker and an API started on it: the API migrates the layout, answers the fixture's queries as the
release that wrote it answered, and the stack takes new documents and rebuilds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests

from shared import keys
from shared.jobs import upgrade
from tests.fixtures.make_format1 import QUERIES, restore
from tests.support import ingest_and_rebuild, search, wait_for

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("fixture", ["format1", "layout1"])
def test_a_data_dir_from_an_earlier_release_serves_and_takes_new_work(fixture, procs, settings, rclient, tmp_path):
    source = FIXTURES / fixture
    shutil.copytree(source / "data", settings.data_dir, copy_function=shutil.copy)  # new file times
    restore(rclient, json.loads((source / "redis.json").read_text()))
    expected = json.loads((source / "answers.json").read_text())
    pointer = json.loads(rclient.hget(keys.pointer("legacy"), "version") or "0")
    assert pointer, "the dump holds the published pointer"

    procs.worker(settings)
    base = procs.api(settings)
    wait_for(lambda: rclient.get(keys.layout()) == str(upgrade.LAYOUT), timeout=30, message="Redis migrated")
    assert json.loads((settings.data_dir / "layout.json").read_text()) == {"layout": upgrade.LAYOUT}

    for (query, mode, flt), want in zip(QUERIES, expected[:-1], strict=True):
        answer = search(base, query, "legacy", 5, mode=mode, filter=flt)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["index_version"] == pointer
        got = [[h["doc_id"], h["chunk_id"], round(h["score"], 5)] for h in body["hits"]]
        assert got == want["hits"], (query, mode)

    if fixture == "format1":  # written before layout 1: no sources
        assert not (settings.data_dir / "sources").exists()
    else:
        sources = requests.get(f"{base}/v1/collections/legacy/sources", timeout=10).json()["sources"]
        assert [s["path"] for s in sources] == ["/srv/notes"]
        assert settings.data_dir.joinpath("sources", "legacy.json").is_file()

    rebuilt = ingest_and_rebuild(base, [{"id": "notes/new.md", "text": "# New\nA brand new quasar note."}],
                                 "legacy")[1]["result"]["version"]
    answer = wait_for(lambda: (r := search(base, "quasar", "legacy", 3, mode="keyword")).json()["index_version"]
                      == rebuilt and r, message="the API to serve the rebuilt version")
    hits = answer.json()["hits"]
    assert hits[0]["doc_id"] == "notes/new.md"
    assert {h["doc_id"] for h in search(base, "gizmo7", "legacy", 5, mode="keyword").json()["hits"]} == {"notes/n07.md"}
