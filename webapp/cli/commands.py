"""`swapline`: the command line for a running Swapline API, built on `webapp.client`.

    swapline ingest PATH... --collection NAME [--glob '*.md']
    swapline search NAME "query" [-k 10] [--mode hybrid] [--filter JSON] [--json]
    swapline status NAME | jobs [--collection C] [--state S] | job ID [--wait] | rebuild NAME [--wait] [--force]
    swapline eval NAME queries.jsonl | canaries set|show|clear NAME | default-mode NAME MODE
    swapline collections | docs NAME [--prefix P] [--version N]
    swapline mcp                      (a Model Context Protocol server over stdio, for agents)
    swapline source add NAME PATH [--watch] | source list NAME | source reconcile NAME ID [--wait]

Talks to SWAPLINE_URL (default http://127.0.0.1:8000) and sends SWAPLINE_API_KEY, when set, as a bearer
token. Every command takes --json. Errors are one line on stderr, never a traceback. Exit status: 0 ok,
1 an API error or a failed job, 2 a usage error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

import click

from shared.jobstates import STATES, SUCCEEDED, TERMINAL
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
from webapp.cli.follow import IngestRun
from webapp.cli.progress import ProgressBar
from webapp.cli.quality import canaries, default_mode, evaluate
from webapp.cli.snapshots import recover, snapshot
from webapp.cli.sources import source
from webapp.client import (
    DEFAULT_URL,
    ApiError,
    ApiUnreachable,
    Client,
    InvalidArgument,
    JobFailed,
    RebuildBusy,
    job_fraction,
)
from webapp.client.client import DEFAULT_RETRIES

EXPECTED_ERRORS = (ApiUnreachable, ApiError, JobFailed, InputError, InvalidArgument, TimeoutError)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


class SwaplineGroup(click.Group):
    """Turns the errors a user can meet into one line with exit status 1, and Ctrl-C into 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
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
@click.option("--retries", default=DEFAULT_RETRIES, show_default=True, type=click.IntRange(0),
              help="Tries again after a connection error, 429, 502, 503 or 504 (waiting as Retry-After says).")
@click.version_option(package_name="swapline", prog_name="swapline")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None, timeout: float, retries: int) -> None:
    """Swapline: semantic search where indexing never blocks searching.

    \b
    Exit status: 0 ok, 1 an API error or a failed job, 2 a usage error, 130 interrupted.
    Shell completion (bash; zsh_source and fish_source for the others):
      eval "$(_SWAPLINE_COMPLETE=bash_source swapline)"
    """
    ctx.obj = Client(url, api_key, timeout, retries, user_agent="swapline-cli")


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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def ingest(client: Client, paths, collection, pattern, create, rebuild, batch_size, batch_bytes,
           max_doc_bytes, max_inflight, poll, as_json) -> None:
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
        sys.exit(EXIT_INTERRUPTED)
    finally:
        bar.close()
        for line in skipped:
            click.echo(f"skipped {line}", err=True)
    if as_json:
        click.echo(json.dumps({"collection": collection, **asdict(summary), "skipped": skipped}, indent=2))
    else:
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


def _json_object(ctx, param, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("a JSON object, e.g. '{\"type\": \".md\"}'")
    return parsed


@main.command()
@click.argument("name")
@click.argument("query")
@click.option("-k", default=10, show_default=True, help="Number of hits.")
@click.option("--mode", type=click.Choice(["vector", "keyword", "hybrid"]), default=None,
              help="Search mode (the API's default: hybrid).")
@click.option("--filter", "filter_", callback=_json_object, metavar="JSON",
              help='Metadata filter, e.g. \'{"type": ".md", "metadata.sig": {"in": ["sig-node"]}}\'.')
@click.option("--version", "version", type=click.IntRange(min=1), default=None, metavar="N",
              help="Search this kept index version (GET /v1/collections/NAME/versions) instead of the served one.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def search(client: Client, name, query, k, mode, filter_, version, as_json) -> None:
    """Search collection NAME for QUERY."""
    answer = client.search(name, query, k, mode=mode, filter=filter_, version=version)
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
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answers.")
@click.pass_obj
def collections(client: Client, as_json) -> None:
    """Every collection: documents, chunks, the index version published and served."""
    items, cursor = [], None
    while True:
        page = client.collections(cursor=cursor)
        items += page["collections"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    click.echo(json.dumps(items, indent=2) if as_json else fmt.collections_table(items))


@main.command()
@click.argument("name")
@click.option("--prefix", default="", help="Only document ids that start with this.")
@click.option("--limit", default=None, type=int, help="Show at most this many.")
@click.option("--version", "pinned", type=click.IntRange(min=1), default=None, metavar="N",
              help="List this kept index version instead of the served one.")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as JSON.")
@click.pass_obj
def docs(client: Client, name, prefix, limit, pinned, as_json) -> None:
    """Documents of collection NAME in the index version served: id, type, chunks, source, updated."""
    items: list[dict] = []
    cursor, version = None, None
    while limit is None or len(items) < limit:
        # Later pages follow the cursor, which stays on the version the first page listed.
        page = client.documents(name, prefix, limit=min(500, limit or 500), cursor=cursor,
                                version=None if cursor else pinned)
        version = page["index_version"]
        items += page["documents"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    items = items[:limit] if limit is not None else items
    click.echo(json.dumps(items, indent=2) if as_json else fmt.documents_table(name, version, items, bool(cursor)))


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
@click.option("--wait", is_flag=True,
              help="Follow the rebuild until it is published and every API process serves it.")
@click.option("--force", is_flag=True,
              help="Publish even what the quality gate refuses (canaries missed, most documents gone).")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (the finished job with --wait).")
@click.pass_obj
def rebuild(client: Client, name, wait, force, as_json) -> None:
    """Rebuild the index of collection NAME from its documents."""
    say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    try:
        started = client.rebuild(name, force=force)
        say(f"rebuild of {name!r} queued: job {started['id']}")
    except RebuildBusy as busy:
        if not busy.job_id:
            raise
        started = client.job(busy.job_id)
        say(f"a rebuild of {name!r} is already queued or running: job {busy.job_id}")
    if not wait:
        if as_json:
            click.echo(json.dumps(started, indent=2))
        return
    begun = time.monotonic()
    done = _follow(client, started["id"], fail=True)
    result = done.get("result") or {}
    client.wait_served(name, result["version"])  # NotServed (exit 1) when an API process cannot load it
    if as_json:
        click.echo(json.dumps(done, indent=2))
        return
    click.echo(f"rebuild {done['id']} succeeded: index v{result.get('version')} with "
               f"{result.get('vectors')} vectors in {time.monotonic() - begun:.1f} s")


@main.command()
@click.pass_obj
def mcp(client: Client) -> None:
    """Serve Swapline to agents: a Model Context Protocol server on stdin/stdout.

    Tools: search, index_status, remember, forget. Configure an agent with the command
    `swapline mcp` and SWAPLINE_URL / SWAPLINE_API_KEY in its environment."""
    from webapp.cli.mcp_server import serve  # the MCP SDK loads for this command only

    serve(client)


def _follow(client: Client, job_id: str, fail: bool = False) -> dict:
    bar = ProgressBar("job", "%")

    def show(job: dict) -> None:
        progress = job.get("progress") or {}
        note = (f"{job['state']} {progress.get('stage', '')} "
                f"{progress.get('done', 0)}/{progress.get('total', 0)}")
        bar.update(100 * job_fraction(job), 100, note, force=job["state"] in TERMINAL)

    try:
        return client.wait(job_id, on_update=show)
    except JobFailed as exc:
        if fail:
            raise
        return exc.job
    finally:
        bar.close()


main.add_command(source)
main.add_command(snapshot)
main.add_command(recover)
main.add_command(evaluate)
main.add_command(canaries)
main.add_command(default_mode)


if __name__ == "__main__":
    main()
