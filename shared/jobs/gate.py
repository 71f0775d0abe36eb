"""The quality gate a rebuild passes after verify and before publish, in the worker.

Two checks, each refusing the publish (job `failed`, pointer unchanged) unless the rebuild was asked
with `force`:

- **Canaries** (`PUT /v1/collections/{c}/canaries`): each canary is a query with the document id or
  path prefix it must find in its top k. They are searched, with the engine the API uses, on the new
  version and on the published one; the new version is refused (`quality_gate`) when it misses more
  than the published one plus `max_drop`. Without a published version, or one built with another
  model, there is nothing to compare with: the new version passes and the report says so.
- **Shrink guard**: a version holding fewer than half the documents of the published one, or none
  when it held some, is refused (`shrink_guard`): a delete-all, a source folder unmounted, an ingest
  gone wrong. A forced rebuild publishes it.

The last evaluation is kept for the collection's status (`quality`) and repeated in the job's result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import eventnames as names
from shared.errors import PublishGated
from shared.index.embedders import same_vector_space
from shared.index.parts import ServedVersion, open_version
from shared.index.vectorindex import VerifyFailed
from shared.search.engine import DEFAULT_MODE, KeywordUnavailable, search
from shared.search.evaluate import first_rank
from shared.services import Services
from shared.storage import UnsafePath

log = logging.getLogger(__name__)

QUALITY_GATE = "quality_gate"
SHRINK_GUARD = "shrink_guard"


@dataclass(frozen=True)
class Decision:
    refused: tuple[str, ...]  # the checks that failed (QUALITY_GATE, SHRINK_GUARD), whether forced or not
    forced: bool

    @property
    def publish(self) -> bool:
        return not self.refused or self.forced


def shrinks(documents_now: int, documents_new: int) -> bool:
    """Whether a version of `documents_new` documents replacing one of `documents_now` loses more than
    half of them, or all."""
    return documents_now > 0 and (documents_new == 0 or documents_new * 2 < documents_now)


def decide(misses_new: int, misses_now: int | None, max_drop: int, documents_now: int, documents_new: int,
           force: bool, allow_shrink: int = 0) -> Decision:
    """The gate's verdict. `misses_now` None: no published version to compare the canaries with;
    `allow_shrink`: documents expected to go (a removed source's), left out of the shrink guard."""
    refused = []
    if misses_now is not None and misses_new > misses_now + max_drop:
        refused.append(QUALITY_GATE)
    if shrinks(max(0, documents_now - allow_shrink), documents_new):
        refused.append(SHRINK_GUARD)
    return Decision(tuple(refused), force)


class Embeddings:
    """Each canary query embedded once, for both versions."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray]):
        self._embed = embed
        self._done: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        if text not in self._done:
            self._done[text] = self._embed([text])[0]
        return self._done[text]


def run_canaries(version: ServedVersion, canaries: list[dict], default_mode: str,
                 embed: Callable[[str], np.ndarray]) -> list[dict]:
    """Each canary's outcome on `version`: hit (its expect among its top k) and the rank."""
    outcomes = []
    for canary in canaries:
        mode = canary.get("mode") or default_mode
        try:
            hits = search(version, canary["query"], int(canary["k"]), mode, None, embed).hits
        except KeywordUnavailable:
            hits = []  # a version without a keyword index cannot answer a keyword canary: a miss
        rank = first_rank([h["doc_id"] for h in hits], [canary["expect"]])
        outcomes.append({"hit": rank is not None, "rank": rank, "mode": mode})
    return outcomes


def _published(svc: Services, collection: str) -> tuple[dict | None, ServedVersion | None, str | None]:
    """(pointer, the published version opened, why it cannot be compared with)."""
    pointer = svc.pointers.get(collection)
    if not pointer:
        return None, None, "no published version"
    try:
        version = open_version(svc.storage.resolve_relative(pointer["path"]), int(pointer["version"]))
    except (OSError, ValueError, VerifyFailed, UnsafePath) as exc:
        return pointer, None, f"version {pointer['version']} could not be opened: {exc}"
    if not same_vector_space(version.manifest.get("model", ""), svc.embedder.model_id):
        return pointer, None, f"version {pointer['version']} was built with another model"
    return pointer, version, None


def check_before_publish(svc: Services, job_id: str, collection: str, final: Path, fence: int,
                         documents_new: int, force: bool, allow_shrink: int = 0) -> dict | None:
    """Run the gate on the verified version in `final`. Raises PublishGated (with the report as the
    job's result) when it is refused; returns the report to add to the job's result, or None when the
    collection has no canaries and the version does not shrink it."""
    config = svc.quality.canaries(collection) or {}
    canaries = config.get("canaries") or []
    pointer, published, no_baseline = _published(svc, collection)
    documents_now = int(pointer.get("documents") or 0) if pointer else 0
    if not canaries and not shrinks(max(0, documents_now - allow_shrink), documents_new):
        return None
    svc.jobs.progress(job_id, names.STAGE_CANARIES, 0, len(canaries))
    default_mode = svc.collections.info(collection).get("default_mode") or DEFAULT_MODE
    embed = Embeddings(svc.embedder.embed)
    new = run_canaries(open_version(final, fence), canaries, default_mode, embed) if canaries else []
    now = run_canaries(published, canaries, default_mode, embed) if canaries and published else None
    misses_new = sum(not o["hit"] for o in new)
    misses_now = None if now is None else sum(not o["hit"] for o in now)
    max_drop = int(config.get("max_drop") or 0)
    decision = decide(misses_new, misses_now, max_drop, documents_now, documents_new, force, allow_shrink)
    report = {
        "version": fence, "job_id": job_id, "at": time.time(), "passed": not decision.refused,
        "published": decision.publish, "refused": list(decision.refused), "forced": force and bool(decision.refused),
        "misses": misses_new, "baseline_version": pointer["version"] if pointer else None,
        "baseline_misses": misses_now, "baseline_note": no_baseline if canaries else None, "max_drop": max_drop,
        "documents": documents_new, "baseline_documents": documents_now, "allowed_shrink": allow_shrink,
        "canaries": [{"query": c["query"], "expect": c["expect"], "k": c["k"], "mode": o["mode"], "hit": o["hit"],
                      "rank": o["rank"], "baseline_hit": None if now is None else now[i]["hit"]}
                     for i, (c, o) in enumerate(zip(canaries, new, strict=True))],
    }
    svc.jobs.progress(job_id, names.STAGE_CANARIES, len(canaries), len(canaries))
    log.info("event=rebuild.gate job=%s collection=%s version=%s misses=%s baseline_misses=%s documents=%s "
             "baseline_documents=%s refused=%s forced=%s", job_id, collection, fence, misses_new, misses_now,
             documents_new, documents_now, ",".join(decision.refused) or "-", report["forced"])
    if not decision.publish:
        svc.quality.record_evaluation(collection, report)
        raise PublishGated(decision.refused[0], _why(report), {"refused": decision.refused[0], "quality": report})
    return report


def _why(report: dict) -> str:
    reasons = []
    if QUALITY_GATE in report["refused"]:
        reasons.append(f"{report['misses']} of {len(report['canaries'])} canaries missed on version "
                       f"{report['version']} against {report['baseline_misses']} on version "
                       f"{report['baseline_version']} (max_drop {report['max_drop']})")
    if SHRINK_GUARD in report["refused"]:
        reasons.append(f"version {report['version']} would hold {report['documents']} documents where version "
                       f"{report['baseline_version']} holds {report['baseline_documents']} (more than half "
                       "gone); rebuild with force to publish it")
    return "; ".join(reasons) + "; the published version stays"
