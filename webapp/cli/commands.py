"""`swapline`: the command line for a running Swapline API.

    swapline ingest PATH... --collection NAME [--glob '*.md']
    swapline search NAME "query" [-k 10] [--json]
    swapline status NAME | jobs [--collection C] [--state S] | job ID [--wait] | rebuild NAME [--wait]
    swapline source add NAME PATH [--watch] | source list NAME | source reconcile NAME ID [--wait]

Talks to SWAPLINE_URL (default http://127.0.0.1:8000) and sends SWAPLINE_API_KEY, when set, as a bearer
token. Errors are one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time

import click

from shared.jobs.model import STATES, SUCCEEDED, TERMINAL
from webapp.cli import render as fmt
from webapp.cli.batching import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_DOCS,
    DEFAULT_MAX_DOC_BYTES,
    InputError,
    find_files,
    make_batches,
    read_documents,
)
from webapp.cli.client import DEFAULT_URL, ApiError, ApiUnreachable, Client, RebuildBusy
from webapp.cli.follow import IngestRun, JobFailed, job_fraction, wait_job
from webapp.cli.progress import ProgressBar
from webapp.cli.sources import source

EXPECTED_ERRORS = (ApiUnreachable, ApiError, JobFailed, InputError, TimeoutError)


class SwaplineGroup(click.Group):
    """Turns the errors a user can meet into one line, exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            hint = {401: "; set SWAPLINE_API_KEY or --api-key", 403: "; this needs a key with a higher role"}
            raise click.ClickException(exc.details() + hint.get(exc.status, "")) from None
        except EXPECTED_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=SwaplineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="SWAPLINE_URL", default=DEFAULT_URL, show_default=True, metavar="URL",
              help="The API's base URL [env SWAPLINE_URL].")
@click.option("--api-key", envvar="SWAPLINE_API_KEY", default=None, metavar="KEY",
              help="Sent as 'Authorization: Bearer KEY' [env SWAPLINE_API_KEY].")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for one HTTP answer.")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Swapline: semantic search where indexing never blocks searching."""
    ctx.obj = Client(url, api_key, timeout)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-c", "--collection", required=True, help="Collection to write into.")
@click.option("--glob", "pattern", default="*.md", show_default=True, help="Files to take from directories.")
@click.option("--create/--no-create", default=True, show_default=True,
              help="Create the collection if missing.")
@click.option("--rebuild/--no-rebuild", default=True, show_default=True,
              help="Rebuild the index after the batches and wait for it, so the documents are searchable.")
@click.option("--batch-size", default=DEFAULT_BATCH_DOCS, show_default=True, help="Documents per request.")
@click.option("--batch-bytes", default=DEFAULT_BATCH_BYTES, show_default=True, help="JSON bytes per request.")
@click.option("--max-doc-bytes", default=DEFAULT_MAX_DOC_BYTES, show_default=True,
              help="Skip larger files (the API refuses them).")
@click.option("--max-inflight", default=4, show_default=True, help="Unfinished jobs allowed at once.")
@click.option("--poll", default=0.5, show_default=True, help="Seconds between job polls.")
@click.pass_obj
def ingest(client: Client, paths, collection, pattern, create, rebuild, batch_size, batch_bytes,
           max_doc_bytes, max_inflight, poll) -> None:
    """Read files on this machine, post them in batches, follow the jobs to completion.

    A directory contributes its files matching --glob, with ids relative to it; the metadata of each
    document is {"source": path}."""
    files = find_files(paths, pattern)
    _ensure_collection(client, collection, create)
    skipped: list[str] = []
    batches = make_batches(read_documents(files, max_doc_bytes, skipped), batch_size, batch_bytes)
    bar = ProgressBar("ingest", "docs")
    run = IngestRun(client, collection, batches, len(files), rebuild=rebuild, max_inflight=max_inflight,
                    poll=poll, progress=lambda done, total, note, force: bar.update(done, total, note, force))
    try:
        summary = run.run()
    except KeyboardInterrupt:
        bar.close()  # end the bar's line before the message
        click.echo(f"interrupted; jobs already submitted keep running on the server "
                   f"(swapline jobs --collection {collection})", err=True)
        sys.exit(130)
    finally:
        bar.close()
        for line in skipped:
            click.echo(f"skipped {line}", err=True)
    click.echo(fmt.ingest_summary(collection, summary, len(skipped)))


def _ensure_collection(client: Client, name: str, create: bool) -> None:
    try:
        client.collection(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        if not create:
            raise click.ClickException(
                f"collection {name!r} does not exist (drop --no-create to create it)") from None
        if client.create_collection(name):
            click.echo(f"created collection {name!r}", err=True)


@main.command()
@click.argument("name")
@click.argument("query")
@click.option("-k", default=10, show_default=True, help="Number of hits.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def search(client: Client, name, query, k, as_json) -> None:
    """Search collection NAME for QUERY."""
    answer = client.search(name, query, k)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(fmt.search_result(name, query, answer))


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def status(client: Client, name, as_json) -> None:
    """Counts of collection NAME and the index version it serves."""
    info = client.collection(name)
    click.echo(json.dumps(info, indent=2) if as_json else fmt.collection_status(info))


@main.command()
@click.option("--collection", default=None, help="Only jobs of this collection.")
@click.option("--state", default=None,
              type=click.Choice(STATES))
@click.option("--kind", default=None, help="ingest, rebuild, ...")
@click.option("--limit", default=20, show_default=True)
@click.option("--cursor", default=None, help="Continue a listing from its next_cursor.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def jobs(client: Client, collection, state, kind, limit, cursor, as_json) -> None:
    """Recent jobs, newest first."""
    page = client.jobs(collection=collection, state=state, kind=kind, limit=limit, cursor=cursor)
    click.echo(json.dumps(page, indent=2) if as_json else fmt.jobs_table(page))


@main.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the job until it finishes.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def job(client: Client, job_id, wait, as_json) -> None:
    """One job; with --wait, follow it to the end (exit 1 if it fails)."""
    found = _follow(client, job_id) if wait else client.job(job_id)
    click.echo(json.dumps(found, indent=2) if as_json else fmt.job_detail(found))
    if found["state"] in TERMINAL - {SUCCEEDED}:
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="Follow the rebuild until it is published.")
@click.pass_obj
def rebuild(client: Client, name, wait) -> None:
    """Rebuild the index of collection NAME from its documents."""
    try:
        started = client.rebuild(name)
        click.echo(f"rebuild of {name!r} queued: job {started['id']}")
    except RebuildBusy as busy:
        if not busy.job_id:
            raise
        started = {"id": busy.job_id}
        click.echo(f"a rebuild of {name!r} is already queued or running: job {busy.job_id}")
    if not wait:
        return
    begun = time.monotonic()
    done = _follow(client, started["id"], fail=True)
    result = done.get("result") or {}
    click.echo(f"rebuild {done['id']} succeeded: index v{result.get('version')} with "
               f"{result.get('vectors')} vectors in {time.monotonic() - begun:.1f} s")


def _follow(client: Client, job_id: str, fail: bool = False) -> dict:
    bar = ProgressBar("job", "%")

    def show(job: dict) -> None:
        progress = job.get("progress") or {}
        note = (f"{job['state']} {progress.get('stage', '')} "
                f"{progress.get('done', 0)}/{progress.get('total', 0)}")
        bar.update(100 * job_fraction(job), 100, note, force=job["state"] in TERMINAL)

    try:
        return wait_job(client, job_id, on_update=show)
    except JobFailed as exc:
        if fail:
            raise
        return exc.job
    finally:
        bar.close()


main.add_command(source)


if __name__ == "__main__":
    main()
