"""`make bench` / `make bench-quick`: Swapline measured against the parts it wraps and against its targets.

Each module here exposes `run(quick: bool) -> list[dict]`, rows of
    {"name": "dotted.id", "label": "...", "value": 1.23, "unit": "x" | "ms" | "s" | "MiB" | ...,
     "target": {"op": "<=" | ">=", "value": 1.3} or None, "note": "sizes, variant"}
(extra keys such as "series" feed the plot). `python -m tests.bench [--quick]` runs them all
(tests/bench/__main__.py) and writes bench/results.json, BENCHMARKS.md and bench/latency.png
(tests/bench/report.py).

Beside them, benchmarks with a make target or a command of their own, outside that table:
`search_modes` (`make bench-search`: hits@5 and latency of the three search modes on the sample),
`sources` (`make bench-sources`: a whole repository as a source), `chunks` (chunk lengths as the
model sees them) and `agent_tokens` (tokens the MCP search tool returns, grouped and per chunk).
"""

# Run in this order; a module that is missing or fails becomes an error row and the run goes on.
MODULES = ("core", "embed", "calibrate", "latency", "concurrency", "million", "realdata", "incremental", "scaleout",
           "peer", "tenmillion")
