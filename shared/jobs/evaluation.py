"""The `eval` job: labelled queries searched on a collection's published version in every mode, scored
with hits@k, MRR and nDCG@10 (`shared.search.evaluate`), so the collection's `default_mode` can be
chosen on evidence (`swapline eval NAME queries.jsonl`).

The queries are staged under the data dir like a batch of documents (never in the Celery message) and
removed when the job ends; the API bounds their count and sizes before anything is staged."""

from __future__ import annotations

import logging

from shared import eventnames as names
from shared.errors import JobCanceled, JobInputError
from shared.index.embedders import same_vector_space
from shared.index.parts import open_version
from shared.index.vectorindex import VerifyFailed
from shared.jobkinds import EVAL
from shared.jobs.gate import Embeddings
from shared.jobs.submit import check_capacity, create_and_enqueue
from shared.jobstates import QueueFull, new_job_id
from shared.search.engine import DEFAULT_MODE, MODES, KeywordUnavailable, search
from shared.search.evaluate import NDCG_DEPTH, summarize
from shared.services import Services
from shared.storage import UnsafePath

log = logging.getLogger(__name__)


def submit_eval(svc: Services, collection: str, queries: list[dict], k: int, bounded: bool = False) -> dict:
    """Stage the queries ({"query", "expect": [...]}) and queue the eval job."""
    if bounded:
        check_capacity(svc, EVAL.name)
    job_id = new_job_id()
    svc.storage.write_staging(job_id, queries)
    try:
        return create_and_enqueue(svc, EVAL.name, collection, {"queries": len(queries), "k": k}, job_id, bounded)
    except QueueFull:
        svc.storage.delete_staging(job_id)
        raise


def run_eval(svc: Services, job_id: str) -> None:
    raw = svc.jobs.begin(job_id)
    if raw is None:
        return
    try:
        result = evaluate(svc, job_id, raw["collection"], int(svc.jobs.options(job_id).get("k") or 10))
        svc.jobs.succeed(job_id, result)
    finally:
        svc.storage.delete_staging(job_id)
    log.info("event=eval.done job=%s collection=%s version=%s queries=%s %s", job_id, raw["collection"],
             result["version"], result["queries"],
             " ".join(f"{m}.mrr={v.get('mrr')}" for m, v in result["modes"].items()))


def evaluate(svc: Services, job_id: str, collection: str, k: int) -> dict:
    """Every staged query in each mode on the published version: the metrics per mode."""
    pointer = svc.pointers.get(collection)
    if not pointer:
        raise JobInputError(f"collection {collection!r} has no published index version to evaluate")
    try:
        version = open_version(svc.storage.resolve_relative(pointer["path"]), int(pointer["version"]))
        queries = svc.storage.read_staging(job_id)
    except (OSError, ValueError, VerifyFailed, UnsafePath) as exc:
        raise JobInputError(f"cannot evaluate: {exc}") from None
    model = version.manifest.get("model", "")
    vector_ok = same_vector_space(model, svc.embedder.model_id)
    embed = Embeddings(svc.embedder.embed)
    depth = max(k, NDCG_DEPTH)
    expected = [list(q.get("expect") or []) for q in queries]
    total = len(queries) * len(MODES)
    modes: dict[str, dict] = {}
    for m, mode in enumerate(MODES):
        if mode != "keyword" and not vector_ok:
            modes[mode] = {"error": f"version {version.version} was built with {model}; this worker embeds with "
                                    f"{svc.embedder.model_id}"}
            continue
        ranked = []
        try:
            for i, query in enumerate(queries):
                if i % 16 == 0:
                    svc.jobs.progress(job_id, names.STAGE_EVALUATE, m * len(queries) + i, total)
                    if svc.jobs.cancel_requested(job_id):
                        raise JobCanceled(job_id)
                hits = search(version, query["query"], depth, mode, None, embed).hits
                ranked.append([h["doc_id"] for h in hits])
        except KeywordUnavailable as missing:
            modes[mode] = {"error": str(missing)}
            continue
        modes[mode] = summarize(ranked, expected, k)
    svc.jobs.progress(job_id, names.STAGE_EVALUATE, total, total)
    default_mode = svc.collections.info(collection).get("default_mode")
    return {"version": version.version, "queries": len(queries), "k": k, "modes": modes,
            "default_mode": default_mode or DEFAULT_MODE}
