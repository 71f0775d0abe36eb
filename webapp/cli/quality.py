"""`swapline eval`, `swapline canaries ...` and `swapline default-mode`: choosing a collection's search
mode on evidence, and the canary queries every rebuild must keep finding.

    swapline eval NAME queries.jsonl [-k 10] [--json]
    swapline canaries set NAME canaries.json | canaries show NAME | canaries clear NAME
    swapline default-mode NAME vector|keyword|hybrid|default

A queries file holds one JSON object a line: {"query": "...", "expect": ["doc id or path prefix", ...]}
(a single string is taken as a list of one). A canaries file is the body of PUT .../canaries:
{"canaries": [{"query", "expect", "k"?, "mode"?}], "max_drop"?: 0}.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from webapp.client import Client

MODES = ("vector", "keyword", "hybrid")
MAX_FILE_BYTES = 32 * 1024 * 1024  # the API's default request bound: a larger file is refused there anyway


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise click.ClickException(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return path.read_text(encoding="utf-8")


def read_queries(path: Path) -> list[dict]:
    """The labelled queries of a JSON-lines file; a line that is not one is a usage error naming it."""
    queries = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise click.ClickException(f"{path}:{number}: not JSON ({exc})") from None
        expect = item.get("expect") if isinstance(item, dict) else None
        if isinstance(expect, str):
            expect = [expect]
        if not isinstance(item, dict) or not isinstance(item.get("query"), str) or not isinstance(expect, list):
            raise click.ClickException(f'{path}:{number}: expected {{"query": "...", "expect": ["doc id", ...]}}')
        queries.append({"query": item["query"], "expect": expect})
    if not queries:
        raise click.ClickException(f"{path} holds no query")
    return queries


def eval_table(result: dict) -> str:
    k = result["k"]
    lines = [f"version {result['version']}, {result['queries']} queries, default mode {result['default_mode']}",
             f"{'mode':<8} {f'hits@{k}':>9} {'MRR':>7} {'nDCG@10':>8}"]
    for mode in sorted(result["modes"], key=lambda m: MODES.index(m) if m in MODES else len(MODES)):
        row = result["modes"][mode]
        if "error" in row:
            lines.append(f"{mode:<8} {row['error']}")
            continue
        lines.append(f"{mode:<8} {row['hits_at_k']:>9.3f} {row['mrr']:>7.3f} {row['ndcg_at_10']:>8.3f}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("name")
@click.argument("queries_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="The k of hits@k.")
@click.option("--json", "as_json", is_flag=True, help="Print the finished job as JSON.")
@click.pass_obj
def evaluate(client: Client, name, queries_file, k, as_json) -> None:
    """Score the published version of NAME on labelled queries in every search mode: hits@k, MRR,
    nDCG@10 (waits for the server's eval job)."""
    job = client.evaluate(name, read_queries(queries_file), k=k)
    done = client.wait(job["id"])  # JobFailed (exit 1, with its error) when it did not succeed
    click.echo(json.dumps(done, indent=2) if as_json else eval_table(done["result"]))


@click.group()
def canaries() -> None:
    """Canary queries: a rebuild whose new version misses more of them than the published one (plus
    max_drop) is refused, and the published version stays."""


@canaries.command("set")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def set_canaries(client: Client, name, file, as_json) -> None:
    """Set the canaries of NAME from FILE ({"canaries": [...], "max_drop": 0})."""
    try:
        body = json.loads(_read(file))
    except ValueError as exc:
        raise click.ClickException(f"{file}: not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("canaries"), list):
        raise click.ClickException(f'{file}: expected {{"canaries": [...], "max_drop": 0}}')
    saved = client.set_canaries(name, body["canaries"], int(body.get("max_drop") or 0))
    if as_json:
        click.echo(json.dumps(saved, indent=2))
        return
    click.echo(f"{len(saved['canaries'])} canaries set on {name!r} (max_drop {saved['max_drop']})")


@canaries.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def show_canaries(client: Client, name, as_json) -> None:
    """The canaries of NAME (always JSON: they are what `canaries set` reads)."""
    click.echo(json.dumps(client.canaries(name), indent=2))


@canaries.command("clear")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def clear_canaries(client: Client, name, as_json) -> None:
    """Remove the canaries of NAME."""
    client.clear_canaries(name)
    click.echo(json.dumps({"collection": name, "canaries": None}) if as_json else f"canaries of {name!r} removed")


@click.command("default-mode")
@click.argument("name")
@click.argument("mode", type=click.Choice([*MODES, "default"]))
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_obj
def default_mode(client: Client, name, mode, as_json) -> None:
    """Set the search mode of NAME used when a search names none ("default": the service's)."""
    info = client.set_default_mode(name, None if mode == "default" else mode)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"searches of {name!r} without a mode now use {info['default_mode']}")
