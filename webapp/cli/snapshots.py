"""`swapline snapshot ...`: archives of a collection, and new collections made from them.

    swapline snapshot create NAME [--wait]
    swapline snapshot list NAME
    swapline snapshot download NAME ID [-o FILE]
    swapline snapshot restore NEW --from COLLECTION --id ID [--wait]
    swapline snapshot restore NEW --file ARCHIVE [--wait]
    swapline recover [--wait]                 (Redis state rebuilt from the data dir)
"""

from __future__ import annotations

import json

import click

from webapp.client import Client


@click.group()
def snapshot() -> None:
    """Snapshots: one checksummed archive of a collection; restore makes a new collection of it."""


def _finish(client: Client, job: dict, wait: bool, as_json: bool, done: str) -> None:
    if not as_json:
        click.echo(f"{job['kind']} job {job['id']} {job['state']}")
    if wait:
        job = client.wait(job["id"])  # JobFailed (exit 1, with the job's error) when it did not succeed
        if not as_json:
            click.echo(done.format(**(job.get("result") or {})))
    if as_json:
        click.echo(json.dumps(job, indent=2))


@snapshot.command("create")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Follow the job to its end.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer (the finished job with --wait).")
@click.pass_obj
def create(client: Client, name, wait, as_json) -> None:
    """Take a snapshot of collection NAME (its served version and segments)."""
    _finish(client, client.snapshot(name), wait, as_json, "snapshot {id}: version {version}, {bytes} bytes")


@snapshot.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def list_snapshots(client: Client, name, as_json) -> None:
    """The snapshots of collection NAME, oldest first."""
    found = client.snapshots(name)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"collection {name!r} has no snapshot")
    for snap in found:
        click.echo(f"{snap['id']}  version {snap['version']}  {snap['bytes']} bytes  {snap['created_at']}")


@snapshot.command("download")
@click.argument("name")
@click.argument("snapshot_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Where to write the archive (default: NAME-ID.tar here).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_obj
def download(client: Client, name, snapshot_id, output, as_json) -> None:
    """Download snapshot SNAPSHOT_ID of collection NAME (its sha256 checked)."""
    got = client.download_snapshot(name, snapshot_id, output or f"{name}-{snapshot_id}.tar")
    click.echo(json.dumps(got, indent=2) if as_json else f"wrote {got['path']}: {got['bytes']} bytes, "
                                                           f"sha256 {got['sha256']}")


@snapshot.command("restore")
@click.argument("name")
@click.option("--from", "from_collection", default=None, help="The collection a kept snapshot was taken of.")
@click.option("--id", "snapshot_id", default=None, help="The kept snapshot's id (with --from).")
@click.option("--file", "archive", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An archive file to upload instead (a downloaded snapshot).")
@click.option("--wait", is_flag=True, help="Follow the restore to its end.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer (the finished job with --wait).")
@click.pass_obj
def restore(client: Client, name, from_collection, snapshot_id, archive, wait, as_json) -> None:
    """Create collection NAME from a snapshot (--from C --id ID) or an archive (--file)."""
    if archive and (from_collection or snapshot_id) or not archive and not (from_collection and snapshot_id):
        raise click.UsageError("give either --from COLLECTION --id ID, or --file ARCHIVE")
    job = client.restore_archive(name, archive) if archive else \
        client.restore_snapshot(name, from_collection, snapshot_id)
    _finish(client, job, wait, as_json, "restored {collection}: version {version}, {documents} documents")


@click.command()
@click.option("--wait", is_flag=True, help="Follow the job to its end.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer (the finished job with --wait).")
@click.pass_obj
def recover(client: Client, wait, as_json) -> None:
    """Register every collection the data dir holds and Redis does not (after Redis lost its data)."""
    _finish(client, client.recover(), wait, as_json,
            "recovered {recovered} collections (skipped {skipped}): {versions} versions, {documents} documents, "
            "{embedded} embedded")
