"""`swapline source ...`: collections that follow folders on the server's side.

    swapline source add NAME PATH [--watch] [--include GLOB]... [--exclude GLOB]... [--wait]
    swapline source list NAME
    swapline source reconcile NAME ID [--wait | --dry-run]
    swapline source remove NAME ID [--wait]

PATH is read by the workers, not by this command: it must be a folder inside the server's
SWAPLINE_SOURCE_ROOTS."""

from __future__ import annotations

import json
import time

import click

from shared import eventnames as names
from shared.jobstates import TERMINAL
from webapp.cli.progress import ProgressBar
from webapp.client import Client, RebuildBusy

COUNTS = ("files_seen", "files_added", "files_changed", "files_removed", "files_skipped", "chunks_embedded",
          "chunks_reused")


@click.group()
def source() -> None:
    """Folders a collection follows (read by the workers, inside SWAPLINE_SOURCE_ROOTS)."""


def follow_reconcile(client: Client, job_id: str, poll: float = 0.5) -> dict:
    """Follow a reconcile with a progress bar of files ingested; then its rebuild. Returns the job;
    raises JobFailed when it did not succeed."""
    bar = ProgressBar("reconcile", "files")

    def show(job: dict) -> None:
        progress = job.get("progress") or {}
        counts = progress.get("counts") or {}
        note = f"{job['state']} {progress.get('stage', '')}"
        if counts:
            note += (f" batches {counts.get('batches_done', 0)}/{counts.get('batches', 0)}"
                     f" chunks {counts.get('chunks_embedded', 0)} embedded, {counts.get('chunks_reused', 0)} reused")
        total = progress.get("total", 0) if progress.get("stage") == names.STAGE_INGEST else 0
        bar.update(progress.get("done", 0) if total else 0, total, note, force=job["state"] in TERMINAL)

    try:
        job = client.wait(job_id, poll=poll, on_update=show)
    finally:
        bar.close()
    rebuild_id = (job.get("result") or {}).get("rebuild_job_id")
    if rebuild_id:
        client.wait(rebuild_id, poll=poll)
    return job


def summary_line(job: dict, seconds: float) -> str:
    result = job.get("result") or {}
    line = ", ".join(f"{k.replace('_', ' ')} {result.get(k, 0)}" for k in COUNTS)
    tail = "; the new index is being served" if result.get("rebuild_job_id") else "; nothing to rebuild"
    return f"reconcile {job['id']} {job['state']} in {seconds:.1f} s: {line}{tail}"


@source.command("add")
@click.argument("name")
@click.argument("path")
@click.option("--watch", is_flag=True, help="Follow changes: the server reconciles edits by itself.")
@click.option("--include", multiple=True, help="Glob of files to take (repeatable; default: text and code).")
@click.option("--exclude", multiple=True, help="Glob of files or folders to leave out (repeatable).")
@click.option("--prefix", default="", help="Put before every document id (several folders in one collection).")
@click.option("--create/--no-create", default=True, show_default=True, help="Create the collection if missing.")
@click.option("--wait", is_flag=True, help="Follow the first reconcile and its rebuild to the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer (the finished job with --wait).")
@click.pass_obj
def add(client: Client, name, path, watch, include, exclude, prefix, create, wait, as_json) -> None:
    """Make collection NAME follow the folder PATH (on the server)."""
    begun = time.monotonic()
    if create and client.create_collection(name):
        click.echo(f"created collection {name!r}", err=True)
    answer = client.add_source(name, path, watch, list(include), list(exclude), prefix)
    src, job = answer["source"], answer["job"]
    if not as_json:
        click.echo(f"source {src['id']} follows {src['path']}{' (watched)' if src['watch'] else ''}; "
                   f"reconcile job {job['id']}")
    if wait:
        answer["job"] = follow_reconcile(client, job["id"])
        if not as_json:
            click.echo(summary_line(answer["job"], time.monotonic() - begun))
    if as_json:
        click.echo(json.dumps(answer, indent=2))


@source.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def list_sources(client: Client, name, as_json) -> None:
    """The folders collection NAME follows."""
    found = client.sources(name)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"collection {name!r} follows no folder")
    for src in found:
        last = src.get("last_reconcile") or {}
        state = f"last reconcile {last.get('state')} at {last.get('finished_at')}" if last else "never reconciled"
        click.echo(f"{src['id']}  {src['path']}  {'watched' if src['watch'] else 'not watched'}  "
                   f"{src.get('files', 0)} files  {state}")


@source.command("reconcile")
@click.argument("name")
@click.argument("source_id")
@click.option("--wait", is_flag=True, help="Follow the reconcile (progress bar) and its rebuild to the end.")
@click.option("--dry-run", is_flag=True, help="Only show what a reconcile would do now (changes nothing).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer (the finished job with --wait).")
@click.pass_obj
def reconcile(client: Client, name, source_id, wait, dry_run, as_json) -> None:
    """Reconcile collection NAME with its source SOURCE_ID now."""
    begun = time.monotonic()
    say = (lambda line: None) if as_json else click.echo
    if dry_run:
        plan = client.reconcile_plan(name, source_id)
        if as_json:
            click.echo(json.dumps(plan, indent=2))
            return
        how = f"git at {(plan.get('git_commit') or '')[:12]}" if plan["walk"] == "git" else "a walk of the folder"
        say(f"a reconcile of source {source_id} now ({how}) would add {plan['files_added']}, change "
            f"{plan['files_changed']}, remove {plan['files_removed']} and skip {plan['files_skipped']} files; "
            f"{plan['chunks_to_embed']} chunks to embed, {plan['chunks_cached']} cached, "
            f"about {plan['eta_seconds']:g} s of embedding")
        return
    try:
        job = client.reconcile(name, source_id)
        say(f"reconcile of source {source_id} queued: job {job['id']}")
    except RebuildBusy as busy:
        if not busy.job_id:
            raise
        job = client.job(busy.job_id)
        say(f"a reconcile of source {source_id} is already queued or running: job {busy.job_id}")
    if wait:
        job = follow_reconcile(client, job["id"])
        say(summary_line(job, time.monotonic() - begun))
    if as_json:
        click.echo(json.dumps(job, indent=2))


@source.command("remove")
@click.argument("name")
@click.argument("source_id")
@click.option("--wait", is_flag=True, help="Follow the removal to the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer (the finished job with --wait).")
@click.pass_obj
def remove(client: Client, name, source_id, wait, as_json) -> None:
    """Stop following a folder and remove its documents from collection NAME."""
    job = client.remove_source(name, source_id)
    if not as_json:
        click.echo(f"removing source {source_id}: job {job['id']}")
    if wait:
        job = client.wait(job["id"])
        if not as_json:
            click.echo(f"removed {(job.get('result') or {}).get('files_removed', 0)} documents")
    if as_json:
        click.echo(json.dumps(job, indent=2))
