"""schemathesis against /openapi.json of a real API process (with a worker, the hashing embedder and
API keys): every operation, positive and negative data, bounded in examples and time. No answer may
be a 5xx, and every answer must match the document (status, content type, headers, body schema);
the declared auth must be enforced (schemathesis re-sends without and with a wrong key).

Left out: the event stream (SSE never ends), and requests longer than gunicorn's own limits, which
gunicorn answers itself before the API sees them."""

from __future__ import annotations

import json
import os
import time

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import create_collection, wait_job

pytestmark = pytest.mark.integration

ADMIN = "contract-admin-0123456789abcdef"
KEYS = ((ADMIN, "admin"), ("contract-read-0123456789abcdefg", "read"))
# Bounded for the suite; raise them for a deeper local run, e.g. SWAPLINE_CONTRACT_EXAMPLES=200.
MAX_EXAMPLES = int(os.environ.get("SWAPLINE_CONTRACT_EXAMPLES", "15"))
TIME_LIMIT_SECONDS = int(os.environ.get("SWAPLINE_CONTRACT_SECONDS", "240"))
GUNICORN_REQUEST_LINE = 4094  # gunicorn's --limit-request-line default
GUNICORN_FIELD_SIZE = 8190  # --limit-request-field_size default
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, ignored_auth]




def _streams(operation) -> bool:
    """Server-sent events never end on their own: not something to fuzz with a request/response client."""
    return "text/event-stream" in json.dumps(operation.definition.raw.get("responses", {}))


def _beyond_http_server_limits(response) -> bool:
    """gunicorn refuses a request line over 4094 bytes (414) or a header over 8190 bytes (400) with its
    own HTML page, before the application sees the request. Negative data can be that long; those
    answers are the HTTP server's, not the API's, so they are counted apart and not validated."""
    request = response.request
    line = len(request.method) + len(request.path_url) + len(" HTTP/1.1") + 1
    longest_header = max((len(k) + len(v) + 2 for k, v in request.headers.items()), default=0)
    return line > GUNICORN_REQUEST_LINE or longest_header > GUNICORN_FIELD_SIZE


def _fuzz(operation, mode, label, checks, base, session, auth, failures, statuses, path_parameters=None):
    """One hypothesis test over one operation in one generation mode; failures are recorded."""

    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case):
        response = case.call(base_url=base, session=session, headers=auth, timeout=15)
        if _beyond_http_server_limits(response):
            statuses.setdefault(f"{label} (refused by gunicorn)", set()).add(response.status_code)
            hypothesis.reject()
        statuses.setdefault(label, set()).add(response.status_code)
        try:
            case.validate_response(response, checks=checks, headers=auth,
                                   transport_kwargs={"base_url": base, "headers": auth})
        except Exception as exc:  # schemathesis raises a group of the failed checks
            failures.append(f"{label}: {str(exc)[:1500]}")
            raise

    return run


def test_openapi_contract(settings, procs):
    s = settings.with_(api_keys=KEYS)  # default queue bounds: a 503 queue_full would count as a 5xx
    base = procs.api(s, threads=4)
    procs.worker(s)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    # Something to find: collections with an index and a job, so that reads, searches, cancels and
    # deletes can succeed too (random path parameters mostly meet 404s).
    for name in ("docs", "scratch"):
        create_collection(base, name, headers=auth)
    job = requests.post(f"{base}/v1/collections/docs/documents", headers=auth,
                        json={"documents": [{"id": "a", "text": "# A\nalpha beta"}]}).json()
    wait_job(base, job["id"], headers=auth)

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    deadline = time.monotonic() + TIME_LIMIT_SECONDS
    tested = 0
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if _streams(operation):
            continue
        params = {p.name for p in operation.path_parameters}
        known = {"name": "scratch" if operation.method.upper() == "DELETE" and params == {"name"} else "docs",
                 "job_id": job["id"]}
        runs = [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if params & set(known):
            runs.append((GenerationMode.POSITIVE, {k: v for k, v in known.items() if k in params}))
        for mode, fixed in runs:
            if time.monotonic() > deadline:
                break
            label = f"{operation.label} [{mode.value}{', known ids' if fixed else ''}]"
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
            run = _fuzz(operation, mode, label, checks, base, session, auth, failures, statuses, fixed)
            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body)
            except Exception as exc:  # hypothesis re-raises the shrunk failure; it is recorded above
                if not failures or label not in failures[-1]:
                    failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:1500]}")
            tested += 1
    print(f"schemathesis: {tested} operation/mode runs; statuses seen:")
    for label, seen in sorted(statuses.items()):
        print(f"  {label}: {sorted(seen)}")
    assert tested >= 20, "too few operations were tested before the time limit"
    assert not failures, "\n\n".join(failures)
