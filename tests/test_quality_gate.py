"""The quality gate, evaluation and per-collection default mode on real processes: one module-scoped stack
(the session's redis-server, one `celery worker`, the API under gunicorn, the hashing embedder), each
test on collections of its own.

Shown here: canaries set, read and cleared over HTTP with their bounds; a rebuild whose new version
loses a canary fails with the per-canary report while the pointer (and what the API serves) stays; the
collection status shows that evaluation; deleting every document is refused by the shrink guard until a
forced rebuild publishes it; an eval job scores the three modes (and `swapline eval` prints them); a
collection's default_mode decides the mode of a search that names none."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from tests.support import BIN, create_collection, ingest, ingest_and_rebuild, search, wait_for, wait_job
from webapp.client import Client

pytestmark = pytest.mark.integration

# Ids without topical words: the keyword index also reads a chunk's document id.
DOCS = [{"id": f"notes/n{i}.md", "text": f"# {title}\n{body}"} for i, (title, body) in enumerate([
    ("Scheduler", "The scheduler places pods on nodes by filtering and scoring every node."),
    ("Volumes", "Persistent volumes are resized online without restarting the pod."),
    ("Network", "Services get both IPv4 and IPv6 cluster addresses in dual stack."),
    ("Quota", "Resource quotas cap the total memory and cpu one namespace may request."),
])]
CANARIES = [{"query": "scheduler filtering scoring nodes", "expect": "notes/n0.md", "k": 1, "mode": "keyword"},
            {"query": "persistent volumes resized", "expect": "notes/", "k": 3}]


@pytest.fixture(scope="module")
def base(module_settings, module_procs):
    url = module_procs.api(module_settings)
    module_procs.worker(module_settings)
    return url


def collection(base: str, name: str) -> dict:
    resp = requests.get(f"{base}/v1/collections/{name}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def served(base: str, name: str, version: int) -> None:
    wait_for(lambda: search(base, "pods", name).json()["index_version"] == version, timeout=30,
             message=f"{name} v{version} to be served")


def rebuild_of(base: str, job: dict) -> dict:
    done = wait_job(base, job["id"])
    assert done["state"] == "succeeded", done
    return wait_job(base, done["result"]["rebuild_job_id"])


def test_canaries_are_set_read_bounded_and_cleared(base):
    create_collection(base, "birds")
    url = f"{base}/v1/collections/birds/canaries"
    assert requests.get(url, timeout=10).json()["code"] == "canaries_not_found"
    put = requests.put(url, json={"canaries": CANARIES, "max_drop": 1}, timeout=10)
    assert put.status_code == 200, put.text
    got = requests.get(url, timeout=10).json()
    assert got["max_drop"] == 1 and got["updated_at"].endswith("Z")
    assert got["canaries"][1] == {**CANARIES[1], "mode": None}  # k as given, mode: the collection's
    for bad, field in [({"canaries": [{"query": "q", "expect": "x"}] * 51}, "canaries"),
                       ({"canaries": [{"query": "q", "expect": "x", "k": 101}]}, "canaries[0]"),
                       ({"canaries": [{"query": "q" * 2001, "expect": "x"}]}, "canaries[0]"),
                       ({"canaries": [{"query": "q", "expect": "x", "mode": "fuzzy"}]}, "canaries"),
                       ({"canaries": [{"query": "q"}]}, "canaries"),
                       ({"canaries": [], "max_drop": 0}, "canaries")]:
        refused = requests.put(url, json=bad, timeout=10)
        assert refused.status_code == 422, (bad, refused.text)
        assert field in json.dumps(refused.json()["errors"]), refused.text
    assert requests.get(url, timeout=10).json() == got  # nothing refused was kept
    assert requests.delete(url, timeout=10).status_code == 204
    assert requests.delete(url, timeout=10).status_code == 404
    assert requests.put(f"{base}/v1/collections/nope/canaries", json={"canaries": CANARIES}).status_code == 404


def test_a_rebuild_that_loses_a_canary_fails_with_its_report_and_the_pointer_stays(base):
    create_collection(base, "gate")
    _, first = ingest_and_rebuild(base, DOCS, "gate")
    v1 = first["result"]["version"]
    served(base, "gate", v1)
    assert requests.put(f"{base}/v1/collections/gate/canaries", json={"canaries": CANARIES},
                        timeout=10).status_code == 200

    # A good rebuild passes and says so.
    _, second = ingest_and_rebuild(base, [{"id": "notes/n9.md", "text": "# Extra\nAn unrelated note."}], "gate")
    v2 = second["result"]["version"]
    assert second["result"]["quality"]["passed"] and second["result"]["quality"]["misses"] == 0
    served(base, "gate", v2)

    # The scheduler note overwritten with unrelated text: its keyword canary cannot find it any more.
    bad = rebuild_of(base, ingest(base, [{"id": "notes/n0.md", "text": "# Lunch\nSoup and bread on Fridays."}],
                                  "gate"))
    assert bad["state"] == "failed" and bad["error"].startswith("quality_gate:"), bad
    assert bad["result"]["refused"] == "quality_gate"
    report = bad["result"]["quality"]
    assert (report["misses"], report["baseline_misses"], report["baseline_version"]) == (1, 0, v2)
    assert [(c["hit"], c["baseline_hit"]) for c in report["canaries"]] == [(False, True), (True, True)]
    assert report["canaries"][1]["mode"] == "hybrid"  # no mode given: the collection's default

    status = collection(base, "gate")
    assert status["index"]["version"] == v2  # the pointer stayed
    assert status["quality"]["version"] == report["version"] and status["quality"]["passed"] is False
    assert status["quality"]["at"].endswith("Z") and status["quality"]["refused"] == ["quality_gate"]
    answer = search(base, "scheduler filtering", "gate", k=1, mode="keyword").json()
    assert answer["index_version"] == v2 and answer["hits"][0]["doc_id"] == "notes/n0.md"
    versions = requests.get(f"{base}/v1/collections/gate/versions", timeout=10).json()["versions"]
    assert report["version"] not in [v["version"] for v in versions]
    shown = subprocess.run([str(BIN / "swapline"), "status", "gate"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SWAPLINE_URL": base})
    assert f"quality     v{report['version']} refused: quality_gate, 1 of 2 canaries missed" in shown.stdout, shown
    assert "mode        hybrid" in shown.stdout


def test_the_shrink_guard_refuses_a_delete_all_until_a_forced_rebuild(base):
    create_collection(base, "shrink")
    _, first = ingest_and_rebuild(base, DOCS[:3], "shrink")
    served(base, "shrink", first["result"]["version"])
    deletes = [requests.delete(f"{base}/v1/collections/shrink/documents/notes/n{i}.md", timeout=10).json()
               for i in range(3)]
    rebuilds = {rebuild_of(base, job)["id"] for job in deletes}  # coalesced: one to three of them
    finished = [wait_job(base, job_id) for job_id in rebuilds]
    refused = [job for job in finished if job["state"] == "failed"]
    # However the deletes coalesced, the version holding none of the documents is refused.
    assert refused and all(job["error"].startswith("shrink_guard:") for job in refused), finished
    assert refused[-1]["result"]["quality"]["documents"] < refused[-1]["result"]["quality"]["baseline_documents"]
    status = collection(base, "shrink")
    assert status["index"]["version"] != refused[-1]["result"]["quality"]["version"]
    assert status["documents"] == 0 and status["documents_at_rebuild"] >= 1
    assert status["quality"]["refused"] == ["shrink_guard"]

    plain = requests.post(f"{base}/v1/collections/shrink/rebuild", timeout=10).json()
    assert wait_job(base, plain["id"])["state"] == "failed"
    with Client(base) as client:  # the client's (and so `swapline rebuild --force`'s) way to ask
        forced = client.rebuild("shrink", force=True)
    done = wait_job(base, forced["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["documents"] == 0 and done["result"]["quality"]["forced"] is True
    served(base, "shrink", done["result"]["version"])
    assert search(base, "pods", "shrink").json()["hits"] == []
    assert collection(base, "shrink")["quality"]["published"] is True


def test_eval_scores_every_mode_and_the_cli_prints_them(base, tmp_path):
    create_collection(base, "evals")
    _, first = ingest_and_rebuild(base, DOCS, "evals")
    queries = [{"query": "persistent volumes resized online", "expect": ["notes/n1.md"]},
               {"query": "dual stack IPv6 cluster addresses", "expect": ["notes/n2.md"]},
               {"query": "zzz qqq", "expect": ["nothing/"]}]
    resp = requests.post(f"{base}/v1/collections/evals/eval", json={"queries": queries, "k": 3}, timeout=10)
    assert resp.status_code == 202 and resp.json()["kind"] == "eval", resp.text
    job = wait_job(base, resp.json()["id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["version"] == first["result"]["version"] and result["queries"] == 3 and result["k"] == 3
    assert set(result["modes"]) == {"vector", "keyword", "hybrid"}
    assert result["modes"]["keyword"]["hits"] == 2 and result["modes"]["keyword"]["mrr"] == pytest.approx(2 / 3,
                                                                                                          abs=1e-3)
    for row in result["modes"].values():
        assert set(row) == {"queries", "hits", "hits_at_k", "mrr", "ndcg_at_10"} and 0 <= row["mrr"] <= 1
    for bad in ({"queries": []}, {"queries": [{"query": "q"}]}, {"queries": queries, "k": 101},
                {"queries": [{"query": "q", "expect": ["x"] * 21}]}):
        assert requests.post(f"{base}/v1/collections/evals/eval", json=bad, timeout=10).status_code == 422, bad

    lines = tmp_path / "queries.jsonl"
    lines.write_text("".join(json.dumps(q) + "\n" for q in queries))
    cli = subprocess.run([str(BIN / "swapline"), "eval", "evals", str(lines), "-k", "3"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "SWAPLINE_URL": base})
    assert cli.returncode == 0, cli.stderr
    assert "hits@3" in cli.stdout and "MRR" in cli.stdout and "nDCG@10" in cli.stdout
    assert [line.split()[0] for line in cli.stdout.splitlines()[2:]] == ["vector", "keyword", "hybrid"]


def test_default_mode_decides_the_mode_of_a_search_that_names_none(base):
    made = requests.post(f"{base}/v1/collections", json={"name": "modes", "default_mode": "keyword"}, timeout=10)
    assert made.status_code == 201 and made.json()["default_mode"] == "keyword", made.text
    ingest_and_rebuild(base, DOCS, "modes")
    assert search(base, "quotas", "modes").json()["mode"] == "keyword"
    patched = requests.patch(f"{base}/v1/collections/modes", json={"default_mode": "vector"}, timeout=10)
    assert patched.status_code == 200 and patched.json()["default_mode"] == "vector", patched.text
    assert search(base, "quotas", "modes").json()["mode"] == "vector"
    assert search(base, "quotas", "modes", mode="hybrid").json()["mode"] == "hybrid"  # a named mode wins
    assert requests.patch(f"{base}/v1/collections/modes", json={"default_mode": "fuzzy"}).status_code == 422
    assert requests.patch(f"{base}/v1/collections/nope", json={"default_mode": "vector"}).status_code == 404
    requests.patch(f"{base}/v1/collections/modes", json={"default_mode": None}, timeout=10)
    assert collection(base, "modes")["default_mode"] == "hybrid"
    assert search(base, "quotas", "modes").json()["mode"] == "hybrid"
