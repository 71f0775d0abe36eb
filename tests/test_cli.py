"""The `swapline` CLI: unit tests of its file batching, and the real console script run as a
subprocess (so its output is not a terminal) against real API and worker processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support import BIN, default_signals, free_port, wait_for
from webapp.cli.batching import InputError, doc_bytes, find_files, make_batches, read_documents
from webapp.cli.follow import IngestRun
from webapp.client import ApiError

PROGRESS = re.compile(r"^ingest \[[#-]+\] (\d+)/(\d+) docs +\d+% [\d.]+ docs/s ETA [\d:?]+", re.M)

DOCS = {
    "scheduling/priority.md": "# Pod priority\n## Preemption\nHigher priority pods preempt lower "
                              "priority pods when a node is full.",
    "storage/resize.md": "# Volumes\nPersistent volumes are resized online without restarting the pod.",
    "network/dual-stack.md": "# Networking\n### Dual stack\nServices get IPv4 and IPv6 cluster addresses.",
    "network/ingress.md": "# Ingress\nAn ingress routes external HTTP traffic to services by host and path.",
    "nodes/taints.md": "# Taints\nNodes repel pods with taints unless a pod tolerates them.",
}


def swapline(base: str | None, *args: str, timeout: float = 120, env: dict | None = None,
             **popen) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("SWAPLINE_")}
    if base:
        env["SWAPLINE_URL"] = base
    return subprocess.run([str(BIN / "swapline"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **popen)


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "notes.txt").write_text("not markdown")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD.md").write_text("# hidden")
    return root


# ---- unit: files to documents to batches ------------------------------------------------------------


def test_find_files_ids_are_relative_to_the_folder(corpus):
    files = find_files([corpus])
    assert [f.doc_id for f in files] == sorted(DOCS)
    assert all(f.path.suffix == ".md" for f in files)


def test_find_files_rejects_clashing_ids_and_empty_matches(corpus, tmp_path):
    other = tmp_path / "other"
    (other / "storage").mkdir(parents=True)
    (other / "storage" / "resize.md").write_text("# again")
    with pytest.raises(InputError, match="storage/resize.md"):
        find_files([corpus, other])
    with pytest.raises(InputError, match="no files matching"):
        find_files([corpus], "*.rst")


def test_read_documents_skips_what_the_api_would_refuse(tmp_path):
    (tmp_path / "big.md").write_text("x" * 100)
    (tmp_path / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "ok.md").write_text("fine")
    skipped: list[str] = []
    docs = list(read_documents(find_files([tmp_path]), max_doc_bytes=50, skipped=skipped))
    assert [d["id"] for d in docs] == ["ok.md"]
    assert docs[0]["metadata"]["source"].endswith("ok.md")
    assert len(skipped) == 2 and "over the 50-byte limit" in skipped[0] and "not UTF-8" in skipped[1]


def test_batches_respect_count_and_bytes():
    docs = [{"id": f"d{i}", "text": "x" * 1000, "metadata": {}} for i in range(10)]
    assert [len(b) for b in make_batches(docs, max_docs=4, max_bytes=10**6)] == [4, 4, 2]
    per_doc = doc_bytes(docs[0])
    batches = list(make_batches(docs, max_docs=100, max_bytes=3 * per_doc))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sum(batches, []) == docs
    # A document over the byte budget still goes, alone.
    assert [len(b) for b in make_batches(docs[:2], max_docs=100, max_bytes=10)] == [1, 1]


def test_unreachable_api_is_one_friendly_line():
    result = swapline(f"http://127.0.0.1:{free_port()}", "status", "docs")
    assert result.returncode == 1
    assert "cannot reach the Swapline API" in result.stderr
    assert "Traceback" not in result.stderr


HEAVY = ("flask", "celery", "faiss", "numpy", "torch", "sentence_transformers", "redis", "kombu", "mcp", "bm25s")


@pytest.mark.parametrize("args", [("--help",), ("search", "docs", "how are pods scheduled")])
def test_the_cli_imports_nothing_heavy(args):
    # -X importtime lists every module the console script imports (on stderr), whatever it then does.
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    result = swapline(f"http://127.0.0.1:{free_port()}", *args, env={**os.environ, **env})
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "click" in imported and "requests" in imported  # the listing is real
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


# ---- integration: the console script against a live stack --------------------------------------------


def _progress_lines(stderr: str) -> list[tuple[int, int]]:
    assert "\r" not in stderr, "non-tty output must be plain lines, not redraws"
    return [(int(done), int(total)) for done, total in PROGRESS.findall(stderr)]


@pytest.mark.integration
def test_ingest_search_status_rebuild(settings, procs, corpus):
    base = procs.api(settings)
    procs.worker(settings)

    result = swapline(base, "ingest", str(corpus), "--collection", "docs", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "created collection 'docs'" in result.stderr
    lines = _progress_lines(result.stderr)
    assert lines, result.stderr
    assert lines[-1] == (5, 5) and all(total == 5 for _, total in lines)
    assert re.search(r"ingested 5 documents into 'docs' in [\d.]+ s: \d+ chunks, \d+ embedded, 0 reused, "
                     r"3 jobs; index v\d+ is being served", result.stdout), result.stdout

    # The documents are searchable the moment ingest returns.
    found = swapline(base, "search", "docs", "online resize of persistent volumes", "-k", "2")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[1].split()[-1] == "storage/resize.md"
    raw = json.loads(swapline(base, "search", "docs", "ipv6 dual stack services", "--json").stdout)
    assert raw["hits"][0]["doc_id"] == "network/dual-stack.md"
    assert raw["hits"][0]["metadata"]["source"].endswith("corpus/network/dual-stack.md")

    status = swapline(base, "status", "docs")
    assert status.returncode == 0
    assert re.search(r"documents +5\n", status.stdout)
    assert re.search(r"index +v\d+: \d+ vectors", status.stdout)
    before = json.loads(swapline(base, "status", "docs", "--json").stdout)["index"]["version"]

    rebuilt = swapline(base, "rebuild", "docs", "--wait")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert re.search(r"rebuild of 'docs' queued: job [0-9a-f]{32}", rebuilt.stdout)
    version = int(re.search(r"succeeded: index v(\d+)", rebuilt.stdout).group(1))
    assert version > before

    # Re-ingesting unchanged files reuses every vector.
    again = swapline(base, "ingest", str(corpus), "-c", "docs", "--no-create")
    assert again.returncode == 0, again.stderr
    assert "0 embedded" in again.stdout and "created collection" not in again.stderr

    missing = swapline(base, "search", "nope", "anything")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("Error: collection 'nope' does not exist (HTTP 404")
    assert "Traceback" not in missing.stderr
    no_create = swapline(base, "ingest", str(corpus), "-c", "fresh", "--no-create")
    assert no_create.returncode == 1 and "collection 'fresh' does not exist" in no_create.stderr


@pytest.mark.integration
def test_jobs_lists_the_collection_jobs(settings, procs, corpus):
    base = procs.api(settings)
    if requests.get(f"{base}/v1/jobs", timeout=5).status_code in (404, 405):
        result = swapline(base, "jobs")
        assert result.returncode == 1 and "cannot list jobs" in result.stderr
        pytest.skip("GET /v1/jobs is not in the API yet; the CLI answers it with a friendly message")
    procs.worker(settings)
    assert swapline(base, "ingest", str(corpus), "-c", "docs", "--batch-size", "5").returncode == 0
    listed = swapline(base, "jobs", "--collection", "docs")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[0].split()[:4] == ["ID", "KIND", "COLLECTION", "STATE"]
    kinds = {row.split()[1] for row in rows[1:] if re.match(r"[0-9a-f]{32} ", row)}
    assert {"ingest", "rebuild"} <= kinds
    failed = json.loads(swapline(base, "jobs", "--collection", "docs", "--state", "failed", "--json").stdout)
    assert failed["jobs"] == []


@pytest.mark.integration
def test_rebuild_already_running_is_followed(settings, procs, corpus, tmp_path):
    base = procs.api(settings)
    first = procs.worker(settings, name="w1")
    assert swapline(base, "ingest", str(corpus), "-c", "docs").returncode == 0
    first.stop()
    # With no worker the explicit rebuild stays queued, so the CLI's own request meets a 409.
    resp = requests.post(f"{base}/v1/collections/docs/rebuild", timeout=10)
    assert resp.status_code == 202, resp.text
    queued = resp.json()["id"]
    out = tmp_path / "rebuild.out"
    with open(out, "w") as sink:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")} | {"SWAPLINE_URL": base}
        cli = subprocess.Popen([str(BIN / "swapline"), "rebuild", "docs", "--wait"], stdout=sink,
                               stderr=subprocess.STDOUT, text=True, env=env)
        try:
            wait_for(lambda: f"already queued or running: job {queued}" in out.read_text(), timeout=60,
                     message="the CLI to report the rebuild in the way")
            procs.worker(settings, name="w2")
            assert cli.wait(120) == 0, out.read_text()
        finally:
            if cli.poll() is None:
                cli.kill()
    assert re.search(rf"rebuild {queued} succeeded: index v\d+", out.read_text()), out.read_text()
    shown = swapline(base, "job", queued)
    assert shown.returncode == 0 and re.search(r"state +succeeded", shown.stdout)


@pytest.mark.integration
def test_a_failing_job_makes_ingest_exit_nonzero(settings, procs, corpus, tmp_path):
    base = procs.api(settings)
    # A worker that does not share the API's data dir (a volume not mounted on its host) cannot find
    # the staged batch: the job fails for real, in the worker.
    procs.worker(settings.with_(data_dir=tmp_path / "not-shared"))
    result = swapline(base, "ingest", str(corpus), "-c", "docs", "--batch-size", "10")
    assert result.returncode == 1, result.stdout
    match = re.search(r"Error: ingest job ([0-9a-f]{32}) failed: "
                      r"the staged batch is missing from the data dir", result.stderr)
    assert match, result.stderr
    assert "Traceback" not in result.stderr
    job = requests.get(f"{base}/v1/jobs/{match.group(1)}", timeout=5).json()
    assert job["state"] == "failed"


class _QueueFullOnce:
    """Stands in for the HTTP client in a unit test of IngestRun's back-pressure handling only."""

    def __init__(self):
        self.refused = 0
        self.jobs: dict[str, dict] = {}

    def add_documents(self, collection, documents, rebuild):
        if not self.refused:
            self.refused += 1
            raise ApiError(503, "queue_full", "the ingest queue is full", retry_after=0.05)
        job_id = f"{len(self.jobs):032x}"
        self.jobs[job_id] = {"id": job_id, "kind": "ingest", "state": "succeeded",
                             "result": {"chunks": len(documents), "embedded": len(documents)}}
        return dict(self.jobs[job_id], state="queued")

    def job(self, job_id):
        return self.jobs[job_id]


def test_ingest_waits_out_a_full_queue_instead_of_failing():
    client = _QueueFullOnce()
    docs = [{"id": f"d{i}", "text": "x", "metadata": {}} for i in range(5)]
    batches = make_batches(docs, max_docs=2)
    summary = IngestRun(client, "docs", batches, len(docs), rebuild=False, poll=0.01).run()
    assert client.refused == 1 and len(client.jobs) == 3
    assert (summary.documents, summary.jobs, summary.chunks) == (5, 3, 5)


# ---- the command's conventions: --version, --json everywhere, exit codes, completion -----------------


def test_version_usage_and_completion():
    version = swapline(None, "--version")
    assert version.returncode == 0 and re.fullmatch(r"swapline, version \d+\.\d+\.\d+\n", version.stdout)
    usage = swapline(None, "search")  # missing arguments
    assert usage.returncode == 2 and "Missing argument" in usage.stderr
    assert swapline(None, "--retries", "-1", "status", "x").returncode == 2
    helped = swapline(None, "--help")
    assert "130 interrupted" in helped.stdout and "_SWAPLINE_COMPLETE=bash_source" in helped.stdout
    completion = swapline(None, env={**os.environ, "_SWAPLINE_COMPLETE": "bash_source"})
    assert completion.returncode == 0 and "complete -o nosort -F" in completion.stdout
    assert "_swapline_completion" in completion.stdout


def test_every_command_takes_json():
    import click

    from webapp.cli.commands import main

    commands = dict(main.commands)
    assert set(commands) == {"ingest", "search", "status", "jobs", "job", "rebuild", "collections", "docs", "mcp",
                             "source", "snapshot", "recover", "eval", "canaries", "default-mode"}
    commands.pop("mcp")  # speaks the MCP protocol on stdout, nothing else
    group = commands.pop("source")
    assert set(group.commands) == {"add", "list", "reconcile", "remove"}
    commands.update({f"source {name}": command for name, command in group.commands.items()})
    group = commands.pop("snapshot")
    assert set(group.commands) == {"create", "list", "download", "restore"}
    commands.update({f"snapshot {name}": command for name, command in group.commands.items()})
    group = commands.pop("canaries")
    assert set(group.commands) == {"set", "show", "clear"}
    commands.update({f"canaries {name}": command for name, command in group.commands.items()})
    for name, command in commands.items():
        flags = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        assert "--json" in flags, name


@pytest.mark.integration
def test_ctrl_c_while_following_exits_130(settings, procs, tmp_path):
    base = procs.api(settings)  # no worker: the job stays queued, so the command keeps following it
    requests.post(f"{base}/v1/collections", json={"name": "docs"}, timeout=10)
    job = requests.post(f"{base}/v1/collections/docs/rebuild", timeout=10).json()
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPLINE_")} | {"SWAPLINE_URL": base}
    with open(err, "w") as sink:
        cli = subprocess.Popen([str(BIN / "swapline"), "job", job["id"], "--wait"], stdout=subprocess.PIPE,
                               stderr=sink, text=True, env=env, preexec_fn=default_signals)
        try:
            wait_for(lambda: "job [" in err.read_text(), timeout=30, message="the CLI following the job")
            cli.send_signal(signal.SIGINT)
            assert cli.wait(30) == 130
        finally:
            if cli.poll() is None:
                cli.kill()
    assert err.read_text().rstrip().endswith("interrupted") and "Traceback" not in err.read_text()


@pytest.mark.integration
def test_json_output_of_ingest_and_rebuild(settings, procs, corpus):
    base = procs.api(settings)
    procs.worker(settings)
    done = swapline(base, "ingest", str(corpus), "-c", "docs", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["collection"] == "docs" and summary["documents"] == 5 and summary["index_version"] >= 1
    queued = json.loads(swapline(base, "rebuild", "docs", "--json").stdout)
    assert queued["kind"] == "rebuild" and queued["state"] in ("queued", "running", "succeeded")
    finished = json.loads(swapline(base, "rebuild", "docs", "--wait", "--json").stdout)
    assert finished["state"] == "succeeded" and finished["result"]["version"] > summary["index_version"]
