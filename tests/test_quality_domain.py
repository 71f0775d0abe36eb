"""The quality gate and evaluation without processes: the metric math against hand-computed values, the
gate's decision, and ingest -> rebuild -> gate and the eval job's work called directly on fakeredis with
the hashing embedder."""

from __future__ import annotations

import math

import fakeredis
import pytest

from shared.errors import JobInputError, PublishGated
from shared.jobs.deletion import run_delete
from shared.jobs.evaluation import evaluate, submit_eval
from shared.jobs.gate import QUALITY_GATE, SHRINK_GUARD, decide, shrinks
from shared.jobs.ingest import run_ingest
from shared.jobs.rebuild import run_rebuild
from shared.jobs.submit import request_rebuild, submit_delete, submit_documents
from shared.jobstates import FAILED, SUCCEEDED
from shared.search.evaluate import first_rank, gains, hit_at, matches, ndcg, reciprocal_rank, summarize
from shared.settings import Settings
from tests.support import make_services

# --- metrics, by hand ---------------------------------------------------------------------------------


def test_each_expected_entry_counts_once_at_its_first_hit():
    # "a" found at 1 and again at 4 (a second chunk of it): only the first gains.
    assert gains(["a", "x", "b", "a"], ["a", "b"]) == [1, 0, 1, 0]
    # A prefix entry is one relevant item, however many documents it covers.
    assert gains(["docs/a", "docs/b", "z"], ["docs/"]) == [1, 0, 0]
    assert first_rank(["x", "y", "docs/a.md"], ["docs/"]) == 3
    assert first_rank(["x"], ["docs/"]) is None


def test_hits_mrr_and_ndcg_match_hand_computed_values():
    ranked, expect = ["a", "x", "b", "a"], ["a", "b"]
    assert hit_at(ranked, expect, 1) == 1.0
    assert reciprocal_rank(ranked, expect) == 1.0
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1/log2(2) + 1/log2(3) = 1.63093
    assert ndcg(ranked, expect) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg(ranked, expect) == pytest.approx(0.919721, abs=1e-6)

    late = ["x", "y", "docs/a.md"]
    assert hit_at(late, ["docs/"], 2) == 0.0 and hit_at(late, ["docs/"], 3) == 1.0
    assert reciprocal_rank(late, ["docs/"]) == pytest.approx(1 / 3)
    assert ndcg(late, ["docs/"]) == pytest.approx(0.5)  # 1/log2(4) over an ideal of 1

    assert (hit_at(["x"], ["a"], 10), reciprocal_rank(["x"], ["a"]), ndcg(["x"], ["a"])) == (0.0, 0.0, 0.0)
    # Only the first 10 ranks count for nDCG@10.
    assert ndcg(["x"] * 10 + ["a"], ["a"]) == 0.0


def test_summary_averages_over_queries():
    out = summarize([["a", "x", "b", "a"], ["x", "y", "docs/a.md"], ["x"]], [["a", "b"], ["docs/"], ["a"]], k=2)
    assert out["queries"] == 3 and out["hits"] == 1
    assert out["hits_at_k"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-4)
    assert out["ndcg_at_10"] == pytest.approx((0.919721 + 0.5 + 0) / 3, abs=1e-4)
    assert summarize([], [], 5)["queries"] == 0


# --- the gate's decision --------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "new", "shrinking"), [
    (0, 0, False), (10, 5, False), (10, 4, True), (11, 5, True), (1, 0, True), (3, 2, False), (0, 7, False)])
def test_shrink_guard_is_more_than_half_or_to_nothing(now, new, shrinking):
    assert shrinks(now, new) is shrinking


@pytest.mark.parametrize(("misses_new", "misses_now", "max_drop", "refused"), [
    (0, 0, 0, ()), (1, 0, 0, (QUALITY_GATE,)), (1, 0, 1, ()), (2, 1, 0, (QUALITY_GATE,)), (1, 1, 0, ()),
    (3, None, 0, ()),  # nothing published to compare with
])
def test_canaries_refuse_more_misses_than_published_plus_max_drop(misses_new, misses_now, max_drop, refused):
    decision = decide(misses_new, misses_now, max_drop, 10, 10, force=False)
    assert decision.refused == refused and decision.publish is (not refused)


def test_force_publishes_what_either_check_refuses():
    both = decide(2, 0, 0, 10, 0, force=False)
    assert both.refused == (QUALITY_GATE, SHRINK_GUARD) and not both.publish
    forced = decide(2, 0, 0, 10, 0, force=True)
    assert forced.refused == (QUALITY_GATE, SHRINK_GUARD) and forced.publish


# --- domain code on fakeredis ---------------------------------------------------------------------------

# Ids without topical words: the keyword index also reads a chunk's document id.
DOCS = [{"id": f"notes/n{i}.md", "text": f"# {topic.title()}\n{body}"} for i, (topic, body) in enumerate([
    ("scheduler", "The scheduler places pods on nodes by filtering and scoring every node."),
    ("volumes", "Persistent volumes are resized online without restarting the pod."),
    ("network", "Services get both IPv4 and IPv6 cluster addresses in dual stack."),
    ("quota", "Resource quotas cap the total memory and cpu one namespace may request."),
])]


@pytest.fixture
def svc(tmp_path):
    client = fakeredis.FakeRedis(decode_responses=True)
    services = make_services(Settings(embedder="hash", data_dir=tmp_path, redis_url="redis://unused"), client)
    assert services.collections.create("docs")
    yield services
    client.close()


def _ingest(svc, docs: list[dict]) -> str:
    job = submit_documents(svc, "docs", docs, rebuild=True)
    run_ingest(svc, job["id"])
    return svc.jobs.get(job["id"])["result"]["rebuild_job_id"]


def _rebuilt(svc, job_id: str) -> dict:
    run_rebuild(svc, job_id)
    return svc.jobs.get(job_id)


def _gated(svc, job_id: str) -> dict:
    """The rebuild run as its task would: a PublishGated fails the job with its report."""
    with pytest.raises(PublishGated) as refused:
        run_rebuild(svc, job_id)
    svc.jobs.fail(job_id, str(refused.value), result=refused.value.result)
    return svc.jobs.get(job_id)


def test_a_rebuild_that_loses_a_canary_is_refused_and_the_pointer_stays(svc):
    assert _rebuilt(svc, _ingest(svc, DOCS))["state"] == SUCCEEDED
    v1 = svc.pointers.get("docs")["version"]
    svc.quality.set_canaries("docs", {"canaries": [
        {"query": "scheduler filtering scoring nodes", "expect": "notes/n0.md", "k": 1, "mode": None},
        {"query": "resource quotas namespace memory", "expect": "notes/", "k": 1, "mode": "keyword"}],
        "max_drop": 0})
    # The scheduler note replaced by unrelated text: its canary now misses.
    job = _gated(svc, _ingest(svc, [{"id": "notes/n0.md", "text": "# Lunch\nSoup and bread on Fridays."}]))
    assert job["state"] == FAILED and job["error"].startswith("quality_gate:")
    report = job["result"]["quality"]
    assert job["result"]["refused"] == QUALITY_GATE and report["refused"] == [QUALITY_GATE]
    assert report["misses"] == 1 and report["baseline_misses"] == 0 and report["baseline_version"] == v1
    assert [c["hit"] for c in report["canaries"]] == [False, True]
    assert [c["baseline_hit"] for c in report["canaries"]] == [True, True]
    assert report["canaries"][0]["mode"] == "hybrid" and report["canaries"][1]["mode"] == "keyword"
    assert svc.pointers.get("docs")["version"] == v1
    assert not svc.storage.version_dir("docs", report["version"]).exists()  # the refused build is removed
    assert svc.quality.last_evaluation("docs")["version"] == report["version"]

    # max_drop 1 lets one more miss through; the evaluation recorded is the published one.
    svc.quality.set_canaries("docs", {**svc.quality.canaries("docs"), "max_drop": 1})
    job, _ = request_rebuild(svc, "docs", exclusive=True)
    done = _rebuilt(svc, job["id"])
    assert done["state"] == SUCCEEDED and done["result"]["quality"]["passed"]
    assert svc.pointers.get("docs")["version"] == done["result"]["version"]
    assert svc.quality.last_evaluation("docs")["published"] is True


def test_the_shrink_guard_refuses_deleting_most_documents_until_forced(svc):
    _rebuilt(svc, _ingest(svc, DOCS))
    v1 = svc.pointers.get("docs")["version"]
    delete = submit_delete(svc, "docs", [d["id"] for d in DOCS[:3]])
    run_delete(svc, delete["id"])
    job = _gated(svc, svc.jobs.get(delete["id"])["result"]["rebuild_job_id"])
    assert job["error"].startswith("shrink_guard:") and "force" in job["error"]
    quality = job["result"]["quality"]
    assert (quality["documents"], quality["baseline_documents"], quality["canaries"]) == (1, 4, [])
    assert svc.pointers.get("docs")["version"] == v1

    forced, _ = request_rebuild(svc, "docs", exclusive=True, force=True)
    done = _rebuilt(svc, forced["id"])
    assert done["state"] == SUCCEEDED and done["result"]["quality"]["forced"] is True
    assert svc.pointers.get("docs")["documents"] == 1


def test_eval_scores_each_mode_on_the_published_version(svc):
    with pytest.raises(JobInputError):
        evaluate(svc, "no-job", "docs", 3)  # nothing published yet
    _rebuilt(svc, _ingest(svc, DOCS))
    queries = [{"query": "persistent volumes resized online", "expect": ["notes/n1.md"]},
               {"query": "dual stack IPv6 cluster addresses", "expect": ["notes/n2.md", "notes/x.md"]},
               {"query": "zzz qqq", "expect": ["nothing/"]}]
    job = submit_eval(svc, "docs", queries, 3)
    result = evaluate(svc, job["id"], "docs", 3)
    assert result["version"] == svc.pointers.get("docs")["version"] and result["queries"] == 3
    assert set(result["modes"]) == {"vector", "keyword", "hybrid"}
    keyword = result["modes"]["keyword"]
    assert keyword["hits"] == 2 and keyword["mrr"] == pytest.approx(2 / 3, abs=1e-4)
    # Query 2 finds one of its two entries at rank 1: nDCG 1 / (1 + 1/log2(3)).
    assert keyword["ndcg_at_10"] == pytest.approx((1 + 1 / (1 + 1 / math.log2(3))) / 3, abs=1e-4)


def test_recover_restores_the_canaries_and_default_mode_kept_in_the_data_dir(svc):
    from shared.jobs.fromdisk import adopt_collection, save_config

    _rebuilt(svc, _ingest(svc, DOCS))
    canaries = {"canaries": [{"query": "quotas", "expect": "notes/n3.md", "k": 1, "mode": None}], "max_drop": 0}
    svc.quality.set_canaries("docs", canaries)
    svc.collections.set_default_mode("docs", "keyword")
    save_config(svc, "docs")
    svc.redis.flushall()  # Redis lost its data; the data dir kept it
    assert adopt_collection(svc, "docs")["documents"] == 4
    assert svc.quality.canaries("docs") == canaries
    assert svc.collections.info("docs")["default_mode"] == "keyword"
    svc.quality.clear_canaries("docs")
    svc.collections.set_default_mode("docs", None)
    save_config(svc, "docs")
    assert not svc.storage.config_file("docs").exists()


def test_a_removed_sources_documents_are_the_only_shrink_allowed(svc):
    """A source's removal lets its own documents go, and only them: a queued rebuild that would also
    publish an accidental loss (every other document tombstoned) is still refused."""
    _rebuilt(svc, _ingest(svc, DOCS))
    delete = submit_delete(svc, "docs", [d["id"] for d in DOCS])
    run_delete(svc, delete["id"])
    queued = svc.jobs.get(delete["id"])["result"]["rebuild_job_id"]
    job, created = request_rebuild(svc, "docs", exclusive=False, allow_shrink=1)
    assert (job["id"], created) == (queued, False) and svc.jobs.options(queued) == {"allow_shrink": 1}
    request_rebuild(svc, "docs", exclusive=False, allow_shrink=1)
    assert svc.jobs.options(queued) == {"allow_shrink": 2}  # two removals coalesced: both allowed
    done = _gated(svc, queued)
    assert done["error"].startswith("shrink_guard:") and done["result"]["quality"]["allowed_shrink"] == 2
    assert decide(0, None, 0, 10, 4, False, allow_shrink=3).publish  # 7 expected to stay; 4 is over half
    assert not decide(0, None, 0, 10, 3, False, allow_shrink=3).publish
    assert decide(0, None, 0, 10, 0, False, allow_shrink=10).publish  # the only source removed
    assert not decide(1, 0, 0, 10, 0, False, allow_shrink=10).publish  # canaries still apply


def test_a_forced_request_coalesced_into_a_queued_rebuild_forces_it(svc):
    _rebuilt(svc, _ingest(svc, DOCS))
    delete = submit_delete(svc, "docs", [d["id"] for d in DOCS])
    run_delete(svc, delete["id"])
    queued = svc.jobs.get(delete["id"])["result"]["rebuild_job_id"]
    assert svc.jobs.options(queued) == {}
    # An explicit forced request; the queued one takes it over.
    job, created = request_rebuild(svc, "docs", exclusive=False, force=True)
    assert (job["id"], created) == (queued, False) and svc.jobs.options(queued)["force"] is True
    done = _rebuilt(svc, queued)
    assert done["state"] == SUCCEEDED and done["result"]["documents"] == 0


def test_an_expected_id_matches_only_itself_and_a_prefix_needs_its_slash():
    """A canary for notes/1 must miss when only notes/10 comes back: the rebuild lost what it guards."""
    assert matches("notes/1", "notes/1")
    assert not matches("notes/10", "notes/1")
    assert matches("notes/10", "notes/") and not matches("notesx/1", "notes/")
    assert hit_at(["notes/10", "notes/11"], ["notes/1"], 2) == 0.0
