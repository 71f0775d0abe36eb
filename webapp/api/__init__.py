"""The HTTP API: `app.create_app(settings)` builds it.

| module | what lives there |
| --- | --- |
| `app` | the app factory: a short list of `init_app` calls and the blueprints |
| `runtime` | what one app instance runs: services, Celery sender, live indexes, watcher |
| `live` | the live index of each collection in this process, and the watcher that swaps it |
| `errors` | the one error shape for every 4xx/5xx, and back-pressure answers |
| `auth` | API keys and roles, checked for every request |
| `idempotency` | `Idempotency-Key` on job-creating views |
| `apidoc` | what the OpenAPI document says beyond the schemas |
| `metrics` | Prometheus metrics at /metrics |
| `requestid` | X-Request-ID on every answer, and the request's log context |
| `schemas/` | marshmallow schemas of every body, query and answer, one module per resource |
| `routes/` | one blueprint per resource |
"""
