"""How the CLI shows API answers to a person (the --json flags show them raw)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from shared.jobstates import SUCCEEDED
from webapp.cli.follow import IngestSummary


def _one_line(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...")


def ingest_summary(collection: str, s: IngestSummary, skipped: int) -> str:
    line = (f"ingested {s.documents} documents into {collection!r} in {s.seconds:.1f} s: {s.chunks} chunks, "
            f"{s.embedded} embedded, {s.chunks - s.embedded} reused, {s.jobs} jobs")
    if s.index_version is not None:
        line += f"; index v{s.index_version} is being served"
    if skipped:
        line += f"; {skipped} files skipped"
    return line


def search_result(name: str, query: str, answer: dict) -> str:
    hits = answer.get("hits") or []
    if answer.get("index_version") is None:
        return (f"collection {name!r} has no index yet: ingest documents "
                f"(swapline ingest PATH -c {name}) or run `swapline rebuild {name}`")
    mode = f", {answer['mode']}" if answer.get("mode") else ""
    lines = [f"{len(hits)} hits for {query!r} in {name!r} (index v{answer['index_version']}{mode})"]
    for rank, hit in enumerate(hits, 1):
        ranks = ", ".join(f"{side} #{hit[f'{side}_rank']}" for side in ("vector", "keyword")
                          if hit.get(f"{side}_rank") is not None)
        lines.append(f"{rank:>3}. {hit['score']:.4f}  " + (f"({ranks})  " if ranks else "") + hit["doc_id"])
        if hit.get("heading_path"):
            lines.append("       " + " > ".join(hit["heading_path"]))
        lines.append("       " + _one_line(hit.get("text", ""), 100))
    return "\n".join(lines)


def collection_status(info: dict) -> str:
    lines = [f"collection  {info['name']}", f"documents   {info.get('documents', 0)}",
             f"chunks      {info.get('chunks', 0)}"]
    index = info.get("index")
    if index:
        lines.append(f"index       v{index['version']}: {index.get('vectors')} vectors, {index.get('kind')}, "
                     f"{index.get('model')} ({index.get('dim')}-d), built {index.get('built_at')}")
    else:
        lines.append("index       none yet (not searchable)")
    if info.get("default_mode"):
        lines.append(f"mode        {info['default_mode']} (searches that name none)")
    quality = info.get("quality")
    if quality:
        verdict = "passed" if quality.get("passed") else ("forced" if quality.get("published") else "refused: " +
                                                          ", ".join(quality.get("refused") or []))
        lines.append(f"quality     v{quality.get('version')} {verdict}, {quality.get('misses')} of "
                     f"{len(quality.get('canaries') or [])} canaries missed, at {quality.get('at')}")
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def collections_table(items: list[dict]) -> str:
    if not items:
        return "no collections (swapline ingest PATH -c NAME creates one)"
    rows = [("NAME", "DOCUMENTS", "CHUNKS", "PUBLISHED", "SERVED")]
    for c in items:
        published = f"v{c['index']['version']}" if c.get("index") else "-"
        served = f"v{c['served_version']}" if c.get("served_version") is not None else "-"
        rows.append((c["name"], str(c["documents"]), str(c["chunks"]), published, served))
    return "\n".join(_table(rows))


def documents_table(name: str, version: int | None, items: list[dict], more: bool) -> str:
    if version is None:
        return f"collection {name!r} has no index served yet"
    if not items:
        return f"no documents in {name!r} (index v{version}) match"
    rows = [("ID", "TYPE", "CHUNKS", "SOURCE", "UPDATED")]
    rows += [(d["id"], d.get("type") or "", str(d["chunks"]), d.get("source") or "", d.get("updated_at") or "")
             for d in items]
    out = _table(rows)
    out.append(f"{len(items)} documents{' shown (more: raise --limit)' if more else ''} in {name!r}, index v{version}")
    return "\n".join(out)


def _progress(job: dict) -> str:
    if job["state"] == SUCCEEDED:
        return "done"  # the counters describe the last stage, which would read like "0/1"
    p = job.get("progress") or {}
    return f"{p.get('stage', '')} {p.get('done', 0)}/{p.get('total', 0)}".strip()


def jobs_table(page: dict) -> str:
    jobs = page.get("jobs") or []
    if not jobs:
        return "no jobs"
    rows = [("ID", "KIND", "COLLECTION", "STATE", "PROGRESS", "CREATED", "ERROR")]
    for job in jobs:
        rows.append((job["id"], job["kind"], job["collection"], job["state"], _progress(job),
                     job.get("created_at") or "", _one_line(job.get("error") or "", 60)))
    out = _table(rows)
    if page.get("next_cursor"):
        out.append(f"more: swapline jobs --cursor {page['next_cursor']}")
    return "\n".join(out)


def job_detail(job: dict) -> str:
    lines = [f"job         {job['id']}", f"kind        {job['kind']}", f"collection  {job['collection']}",
             f"state       {job['state']}", f"progress    {_progress(job)}"]
    for key in ("created_at", "started_at", "finished_at"):
        if job.get(key):
            lines.append(f"{key.replace('_at', ''):<12}{job[key]}")
    if job.get("error"):
        lines.append(f"error       {job['error']}")
    if job.get("result"):
        lines.append("result      " + ", ".join(f"{k}={v}" for k, v in job["result"].items()))
    return "\n".join(lines)
