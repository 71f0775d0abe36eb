"""Logs operators can parse: with SWAPLINE_LOG_FORMAT=json every line a real worker, API process and
beat print is one JSON object, and the lines about a job carry its job id, its collection and the id of
the API request that created it; every HTTP answer carries X-Request-ID."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys

import pytest
import requests

from shared.logs import configure_logging, log_context
from tests.support import BIN, Proc, child_env, create_collection, wait_for, wait_job

# Celery prints this itself (outside logging) when a signal asks the worker to stop.
CELERY_SHUTDOWN_NOTICE = re.compile(r"worker: (Warm|Cold) shutdown \(MainProcess\)")


def parse_lines(text: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    return records


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook = hook


def test_text_and_json_lines_carry_the_context(capsys, restore_logging):
    configure_logging("json")
    with log_context(job_id="j1", collection="docs", request_id="r1"):
        logging.getLogger("swapline.test").warning("event=test.line job=%s", "j1")
    logging.getLogger("swapline.test").warning("event=test.outside")
    inside, outside = parse_lines(capsys.readouterr().err)[-2:]
    assert inside["event"] == "test.line" and inside["level"] == "WARNING"
    assert (inside["job_id"], inside["collection"], inside["request_id"]) == ("j1", "docs", "r1")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", inside["time"])
    assert outside["event"] == "test.outside" and "job_id" not in outside  # the context ended


@pytest.mark.integration
def test_every_line_a_worker_prints_for_one_job_is_json(settings, procs):
    jsonlogs = settings.with_(log_format="json")
    base = procs.api(jsonlogs)
    worker = procs.worker(jsonlogs)
    create_collection(base)
    resp = requests.post(f"{base}/v1/collections/docs/documents", headers={"X-Request-ID": "req-42"},
                         json={"documents": [{"id": "a.md", "text": "# A\nalpha beta"}], "rebuild": False}, timeout=30)
    assert resp.status_code == 202 and resp.headers["X-Request-ID"] == "req-42"
    job_id = resp.json()["id"]
    assert wait_job(base, job_id)["state"] == "succeeded"
    wait_for(lambda: "succeeded in" in worker.log(), message="the worker logging the task's end")

    records = parse_lines(worker.log())
    about_job = [r for r in records if r.get("job_id") == job_id]
    assert about_job, records
    assert all(r["collection"] == "docs" and r["request_id"] == "req-42" for r in about_job), about_job
    assert any(r.get("event") == "ingest.segment" for r in about_job)
    assert any(r["message"].endswith("ready.") for r in records)

    # Stopping: every line but Celery's own shutdown notice stays JSON.
    worker.stop(signal.SIGTERM)
    rest = [line for line in worker.log().splitlines() if not CELERY_SHUTDOWN_NOTICE.fullmatch(line.strip())]
    parse_lines("\n".join(rest))


@pytest.mark.integration
def test_api_lines_are_json_and_answers_carry_a_request_id(settings, procs):
    jsonlogs = settings.with_(log_format="json")
    base = procs.api(jsonlogs)
    sent = requests.get(f"{base}/v1/collections/nope", headers={"X-Request-ID": "abc-123"}, timeout=10)
    assert sent.status_code == 404 and sent.headers["X-Request-ID"] == "abc-123"
    fresh = requests.get(f"{base}/healthz", timeout=10).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    unusable = requests.get(f"{base}/healthz", headers={"X-Request-ID": "a b\tc" * 40}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", unusable.headers["X-Request-ID"])
    create_collection(base)
    log = procs.log_dir / "api1.log"
    records = parse_lines(log.read_text())
    assert any(r["logger"].startswith("gunicorn") for r in records)  # gunicorn's own lines too
    assert any(r.get("event") == "auth.open" for r in records)


@pytest.mark.integration
def test_every_line_beat_prints_is_json(settings, tmp_path):
    # A stale threshold of 25 s makes beat send the sweep every 5 s (Settings.sweep_interval).
    jsonlogs = settings.with_(log_format="json", sweep_stale_seconds=25)
    beat = Proc("beat", [str(BIN / "celery"), "-A", "workers.celery_app", "beat", "--loglevel", "INFO",
                         "--schedule", str(tmp_path / "schedule")], child_env(jsonlogs), tmp_path)
    health = [sys.executable, "-m", "workers.health", "beat", "--schedule", str(tmp_path / "schedule")]
    try:
        wait_for(lambda: "Sending due task swapline-sweep" in beat.log() or not beat.alive(), timeout=60,
                 message="beat sending the sweep")
        # Compose's health check for beat, on the schedule file this beat writes after each send.
        checked = subprocess.run(health, env=child_env(jsonlogs), capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0 and checked.stdout.startswith("healthy:"), checked.stdout + checked.stderr
    finally:
        beat.stop(signal.SIGTERM)
    records = parse_lines(beat.log())
    assert any("Sending due task swapline-sweep" in r["message"] for r in records), records
    # The webhook dispatch, sent every 2 s, is not one line every 2 s (workers.celery_app.QuietDispatchSends).
    assert not any("swapline-webhooks-dispatch" in r["message"] for r in records), records


def test_gunicorn_builds_an_access_line_only_when_an_access_log_is_asked_for(tmp_path, restore_logging):
    """The API's logging config (for its format) would make gunicorn build every request's access line
    and drop it; the config's logger builds one only with --access-logfile, and then writes it."""
    from gunicorn.config import Config

    from webapp.api import gunicorn_conf

    def logger(accesslog: str | None) -> tuple[gunicorn_conf.Logger, list]:
        cfg = Config()
        cfg.set("logconfig_dict", gunicorn_conf.logconfig_dict)
        if accesslog:
            cfg.set("accesslog", accesslog)
        built: list = []
        made = gunicorn_conf.Logger(cfg)
        made.atoms = lambda *request: built.append(request) or {"r": "POST /v1 HTTP/1.1"}  # type: ignore[method-assign]
        return made, built

    quiet, built = logger(None)
    quiet.access(object(), object(), {}, 0.001)
    assert built == []
    path = tmp_path / "access.log"
    asked, built = logger(str(path))
    asked.access(object(), object(), {}, 0.001)
    assert len(built) == 1
    for handler in asked.access_log.handlers:
        handler.flush()
    assert "POST /v1 HTTP/1.1" in path.read_text()
