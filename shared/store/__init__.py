"""The owners of Swapline's state in Redis: one class per piece of state, and the only code that talks
to Redis. Keys come from `shared.keys`; multi-step changes are Lua scripts in `shared/lua/`.

| module | owns |
| --- | --- |
| `jobs` | job hashes and every state transition, progress, the queued/running sets |
| `history` | reading jobs back: listing with cursors, retention, recent and per-collection views |
| `collections` | collection names, document map, segment list, counters, drop markers |
| `pointers` | the published index version of each collection, its history, swap messages |
| `locks` | the rebuild lease with fencing numbers, the rebuild coalescing slot, housekeeping locks |
| `events` | the event stream (SSE) and the one shape of its entries |
| `replicas` | which index version each API process serves (heartbeats) and its reader leases on them |
| `layout` | the layout the Redis state is written in (migrations raise it) |
| `idempotency` | Idempotency-Key records |
| `counters` | monotonic work counters (chunks embedded, seconds embedding) that /metrics exports |
| `broker` | a read-mostly view of kombu's Redis layout, for the sweeper and metrics |
"""
