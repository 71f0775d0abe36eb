"""Settings: the one place the environment is read.

`load_settings()` turns `SWAPLINE_*` variables into a frozen `Settings`; the web app factory and the
Celery app both take one, and tests build their own with `Settings(...)` or `load_settings(env)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.names import is_collection_name

# "minilm" is all-MiniLM-L6-v2 in the runtime calibrated fastest on this host (shared/index/calibration.py);
# the others pick one: torch (sentence-transformers) fp32 or bf16, ONNX Runtime fp32, int8 or w8 (8-bit weights
# in blocks), OpenVINO bf16, the test hashing one, or "clustered" or "realistic", synthetic benchmark embedders
# (shared/index/embedders.py), never for real text.
EMBEDDERS = ("minilm", "minilm-torch", "minilm-torch-bf16", "minilm-onnx", "minilm-onnx-int8", "minilm-onnx-w8",
             "minilm-openvino-bf16", "hash", "clustered", "realistic")
LOG_FORMATS = ("text", "json")
ROLES = ("read", "write", "admin")
# "keys": requests need a key from api_keys (an API with no keys may listen on loopback only);
# "open": no keys, on any address, because the operator said so.
AUTH_MODES = ("keys", "open")
# A key shorter than this is refused at start: guessable keys are no keys.
MIN_KEY_CHARS = 24
# SWAPLINE_API_KEYS grammar: entries split by ",", key and grant by the last ":", a grant is a role,
# optionally "@" and the collections it is limited to, split by "+" ("*": every collection). None of
# these characters may appear in a collection name (shared/names.py), and ":" or "," never in a grant.
SCOPE_SEP = "@"
SCOPE_JOIN = "+"
ALL_COLLECTIONS = "*"


# A WAIT must end before the Redis client's socket timeout (5 s, shared/store/conn.py) gives up on it.
MAX_REDIS_WAIT_MS = 4000


# The deepest re-rank a compressed part may ask for (candidates per hit); a manifest's is clamped to it.
MAX_RERANK = 64
COMPRESS_CODES = ("pq4", "sq8")
RERANK_ROWS = ("float16", "float32")


class SettingsError(ValueError):
    """An environment variable has a value Swapline cannot use."""


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel ("host:port,host:port,..."; empty: none): every process finds the primary through
    # these under `redis_sentinel_master`, again after each failover; `redis_url` then gives only the
    # database number and the primary's credentials. With Sentinel, an acknowledged write (a job answered
    # 202, a fence put to use, a publish) is first held by `redis_min_replicas` replicas, or by every
    # connected one while fewer are connected (WAIT, at most `redis_wait_ms`; shared/store/conn.py), so a
    # promoted replica that was waited for holds everything that was acknowledged (README, "When things
    # fail", says what waiting for connected replicas only leaves open).
    redis_sentinels: str = ""
    redis_sentinel_master: str = "swapline"
    redis_sentinel_password: str = field(default="", repr=False)
    redis_min_replicas: int = 1
    redis_wait_ms: int = 2000
    data_dir: Path = Path("./var/data")
    embedder: str = "minilm"
    hash_dim: int = 384
    # Chunking: MiniLM truncates at 256 word pieces, so chunks are capped in tokens, with room to spare.
    chunk_max_tokens: int = 200
    chunk_overlap_tokens: int = 40
    embed_batch_size: int = 32
    progress_every: int = 64
    # Vectors added to the FAISS index per step; cancel and lease are checked between steps.
    build_step: int = 4096
    # Seconds to pause between build steps. 0 in production; demos and tests raise it to watch a build.
    build_step_delay: float = 0.0
    # At or above this many vectors a rebuild builds an approximate IVF index; below it, exact search is
    # fast enough (shared/index/vectorindex.py says why IVF-Flat).
    approx_threshold: int = 200_000
    # At or above this many vectors the IVF lists hold codes instead of floats and searches re-rank
    # candidates from the part's memory-mapped float vectors (shared/index/compressed.py):
    # compress_codes "pq4" (OPQ rotation + 4-bit PQ scanned by FAISS's fast-scan kernels, 48 B a vector
    # at 384-d) or "sq8" (8-bit scalar codes, 384 B). The build tunes the re-rank depth (1, 2, 4, ... up
    # to rerank_depth times k candidates) with nprobe; PQ4's coarser codes need the deeper end of it.
    compress_threshold: int = 2_000_000
    compress_codes: str = "pq4"
    # The re-rank's float rows as stored in a compressed part: float16 (half the disk and page cache;
    # scores within 2^-11) or float32 (exact).
    rerank_rows: str = "float16"
    rerank_depth: int = 64
    # An IVF build picks the smallest nprobe (1, 2, 4, ... up to this many lists) whose recall@10 against
    # exact search on query-like probes reaches recall_target; if even the largest stays below
    # recall_floor, the build is refused and the live version stays. Queries as far from their chunks as
    # real MiniLM questions need a wide probe (on realistic data, held-out queries reached 0.96 at 256
    # of 1,788 lists at 200k rows: README "Index builds"), so the ladder goes to 2048.
    ivf_nprobe: int = 2048
    recall_target: float = 0.95
    recall_floor: float = 0.90
    # A rebuild starts from the published version (copy, drop superseded rows, add new ones) when only
    # segments were added since it was built; false: every rebuild reads every segment.
    incremental_builds: bool = True
    # The lease of a collection's rebuild lock, and the liveness of every running job: a worker's
    # keepalive thread refreshes both every quarter of it; a running job not heard from for this long
    # (and holding no lease) is sent again by the recovery check every worker runs.
    lock_ttl_seconds: int = 60
    # Runs of one job lost with their worker (killed, crashed) before the job fails instead.
    job_max_attempts: int = 3
    rebuild_retry_seconds: float = 2.0
    task_soft_time_limit: int = 3300
    task_time_limit: int = 3600
    # Redis redelivers a task not acked for this long; 0: the hard time limit plus 600 s, so a task that
    # still runs is never handed to a second worker (a duplicate delivery does nothing anyway).
    visibility_timeout_seconds: int = 0
    watcher_poll_seconds: float = 2.0
    replica_ttl_seconds: int = 30
    # A reader lease an API process holds on each version it serves, renewed with its heartbeat: version
    # collection deletes no leased version, so a process paused this long still finds its files.
    reader_lease_seconds: int = 900
    api_torch_threads: int = 1
    worker_torch_threads: int = 2
    # Worker processes run at this CPU niceness (0-19), below the API's, so indexing on a shared host
    # never slows searching (a rebuild's CPU goes to searches first); 0 keeps the inherited priority.
    worker_nice: int = 10
    versions_keep: int = 5
    collect_versions_seconds: float = 300.0
    job_ttl_seconds: int = 7 * 24 * 3600
    jobs_keep_per_collection: int = 100
    idempotency_ttl_seconds: int = 24 * 3600
    max_queued_ingest: int = 10_000
    max_queued_index: int = 1_000
    max_request_bytes: int = 32 * 1024 * 1024
    # A snapshot archive: the largest one a restore accepts (uploaded or kept) and an upload may send.
    max_snapshot_bytes: int = 8 * 1024 * 1024 * 1024
    max_documents_per_batch: int = 1_000
    max_document_bytes: int = 1024 * 1024
    # A document's metadata is copied into each of its chunks: its JSON is bounded at the API (422)
    # and at ingest (front matter past it is dropped).
    max_metadata_bytes: int = 16 * 1024
    max_k: int = 100
    max_query_chars: int = 2_000
    events_max_len: int = 100_000
    sweep_stale_seconds: int = 300
    # Server-sent events: a heartbeat comment keeps proxies from closing idle streams; a stream ends
    # after sse_max_seconds (the client reconnects with Last-Event-ID and misses nothing); a write
    # stuck on a slow client fails after sse_send_timeout_seconds; at most sse_max_streams per process.
    sse_heartbeat_seconds: float = 15.0
    sse_max_seconds: float = 300.0
    sse_send_timeout_seconds: float = 30.0
    sse_max_streams: int = 128
    # Search results cached per served version (dropped on swap); 0 turns the cache off.
    search_cache_size: int = 512
    # Kept versions an API process holds open besides the one it serves, for reads that ask for one
    # (`version` on a search or a document read, a listing cursor): the least recently used is closed
    # (and its reader lease released) past this many.
    pinned_versions: int = 2
    # "text": key=value lines; "json": one JSON object per line (shared/logs.py).
    log_format: str = "text"
    # Webhooks: targets on loopback, private, link-local and other non-public addresses are refused
    # unless allowed (tests, a receiver on the same host); failed deliveries are retried after
    # base * 2^(attempt-1) seconds, at most max seconds apart, up to max_attempts attempts.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 8
    webhook_retry_base_seconds: float = 10.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_dispatch_seconds: float = 2.0
    webhook_deliveries_keep: int = 100
    # Sources: folders a collection follows. Empty roots turn sources off; a source's path must resolve
    # (symlinks included) inside one of these ':'-separated folders.
    source_roots: str = ""
    # Changed files per child ingest job of a reconcile (the unit spread over workers and retried alone).
    source_batch_files: int = 16
    # Retries of a failing child batch (with growing waits from source_retry_seconds) before it fails.
    source_batch_retries: int = 3
    source_retry_seconds: float = 2.0
    # The watcher: changes settle this long before a reconcile is submitted; a source's watch lease.
    watch_debounce_seconds: float = 1.0
    watch_lease_seconds: int = 30
    # Embedding cache under the data dir, shared by workers, bounded (least recently used goes first).
    embed_cache_bytes: int = 1024 * 1024 * 1024
    # Compaction: merge a collection's segments once it has this many, or once this share of their rows
    # is superseded (replaced or deleted documents).
    compact_min_segments: int = 32
    compact_superseded_ratio: float = 0.5
    # (key, grant) pairs; a grant is "role" or "role@name+name" (parse_grant). One key may appear in
    # several entries: it holds the highest role each entry gives it on each collection.
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Failed authentications (a wrong key) one client address may make per minute before every request
    # of it that carries a key gets 429 until the minute has passed; 0 turns the limit off.
    auth_failures_per_minute: int = 10
    auth: str = "keys"
    # Host headers an API without keys answers (a DNS-rebinding page reaches a local open API under its
    # own host name): loopback names, plus these (comma-separated).
    allowed_hosts: str = ""

    def __post_init__(self) -> None:
        if self.embedder not in EMBEDDERS:
            raise SettingsError(f"SWAPLINE_EMBEDDER must be one of {', '.join(EMBEDDERS)}, not {self.embedder!r}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"SWAPLINE_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())
        if self.auth not in AUTH_MODES:
            raise SettingsError(f"SWAPLINE_AUTH must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        for _key, grant in self.api_keys:
            parse_grant(grant)  # SettingsError names the bad grant
        short = [role for key, role in self.api_keys if len(key) < MIN_KEY_CHARS]
        if short:
            raise SettingsError(f"SWAPLINE_API_KEYS: every key must be at least {MIN_KEY_CHARS} characters "
                                f"({len(short)} shorter: roles {', '.join(short)}); make one with "
                                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        if self.task_time_limit <= self.task_soft_time_limit:
            raise SettingsError("SWAPLINE_TASK_TIME_LIMIT must be above SWAPLINE_TASK_SOFT_TIME_LIMIT")
        _sentinel_nodes(self.redis_sentinels)  # SettingsError names a malformed entry
        if self.redis_min_replicas < 0 or not 1 <= self.redis_wait_ms <= MAX_REDIS_WAIT_MS:
            raise SettingsError(f"SWAPLINE_REDIS_MIN_REPLICAS must be 0 or more and SWAPLINE_REDIS_WAIT_MS 1 to "
                                f"{MAX_REDIS_WAIT_MS} (below the Redis client's 5 s socket timeout)")
        if self.rerank_rows not in RERANK_ROWS:
            raise SettingsError(f"SWAPLINE_RERANK_ROWS must be one of {', '.join(RERANK_ROWS)}, "
                                f"not {self.rerank_rows!r}")
        if self.compress_codes not in COMPRESS_CODES:
            raise SettingsError(f"SWAPLINE_COMPRESS_CODES must be one of {', '.join(COMPRESS_CODES)}, "
                                f"not {self.compress_codes!r}")
        if not 1 <= self.rerank_depth <= MAX_RERANK:
            raise SettingsError(f"SWAPLINE_RERANK_DEPTH must be 1 to {MAX_RERANK}, not {self.rerank_depth}")
        if self.pinned_versions < 1:
            raise SettingsError(f"SWAPLINE_PINNED_VERSIONS must be 1 or more, not {self.pinned_versions}")
        if not 0 <= self.worker_nice <= 19:
            raise SettingsError(f"SWAPLINE_WORKER_NICE must be 0 to 19, not {self.worker_nice}")

    @property
    def sentinel_nodes(self) -> tuple[tuple[str, int], ...]:
        """The Sentinels as (host, port) pairs; empty without Sentinel."""
        return _sentinel_nodes(self.redis_sentinels)

    @property
    def acknowledged_replicas(self) -> int:
        """Replicas that must hold a write before it is acknowledged: `redis_min_replicas` with Sentinel
        (a replica that can be promoted), none with a single server."""
        return self.redis_min_replicas if self.redis_sentinels.strip() else 0

    @property
    def keepalive_seconds(self) -> float:
        """How often a worker refreshes its running jobs' heartbeats and its leases, and how often each
        worker checks for jobs whose worker is gone: a quarter of the lease, so a lost run is sent again
        within about twice the lease."""
        return max(0.25, self.lock_ttl_seconds / 4)

    @property
    def sweep_interval(self) -> float:
        """How often the sweep runs (history retention, orphaned staged batches)."""
        return float(min(60, max(5, self.sweep_stale_seconds // 5)))

    @property
    def source_root_paths(self) -> tuple[Path, ...]:
        """The source roots, resolved (a root that is itself a symlink counts as its target)."""
        return tuple(Path(part).resolve() for part in self.source_roots.split(":") if part.strip())

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers an unacked task after this long: by default above the hard limit, so a task
        that is still running (late acks) is never handed to a second worker."""
        return self.visibility_timeout_seconds or self.task_time_limit + 600

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


def _sentinel_nodes(raw: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        host, sep, port = entry.rpartition(":")
        host = host.strip("[]")  # an IPv6 address in brackets
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"SWAPLINE_REDIS_SENTINELS is host:port,host:port,...; got {entry!r}")
        nodes.append((host, int(port)))
    return tuple(nodes)


def parse_grant(grant: str) -> tuple[str, frozenset[str] | None]:
    """A grant's role and the collections it is limited to (None: every collection).

    "read" and "read@*" grant read on every collection; "write@docs+notes" grants write on docs and
    notes only. Raises SettingsError for an unknown role or a name that is not a collection name."""
    role, sep, scope = grant.partition(SCOPE_SEP)
    if role not in ROLES:
        raise SettingsError(f"SWAPLINE_API_KEYS: a grant is role or role@collection+collection with role in "
                            f"{', '.join(ROLES)}; got {grant!r}")
    if not sep or scope == ALL_COLLECTIONS:
        return role, None
    names = scope.split(SCOPE_JOIN)
    bad = [name for name in names if not is_collection_name(name)]
    if bad:
        raise SettingsError(f"SWAPLINE_API_KEYS: {grant!r} names {', '.join(map(repr, bad))}, not collection "
                            f"names (or {ALL_COLLECTIONS!r} for all); collections are joined with {SCOPE_JOIN!r}")
    return role, frozenset(names)


def _parse_api_keys(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, grant = item.rpartition(":")
        if not sep or not key:
            raise SettingsError(f"SWAPLINE_API_KEYS entries are key:role or key:role@collection+collection "
                                f"with role in {ROLES}; got an entry without ':'")
        parse_grant(grant)
        pairs.append((key, grant))
    return tuple(pairs)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `SWAPLINE_<FIELD>` variables (upper-cased field names)."""
    env = os.environ if environ is None else environ
    # Field name -> value of the field's type, as parsed below; checked by Settings itself.
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"SWAPLINE_{f.name.upper()}")
        if raw is None or raw == "":
            continue
        try:
            if f.name == "api_keys":
                values[f.name] = _parse_api_keys(raw)
            elif f.name == "data_dir":
                values[f.name] = Path(raw)
            elif isinstance(f.default, bool):
                values[f.name] = raw.lower() in ("1", "true", "yes", "on")
            elif isinstance(f.default, int):
                values[f.name] = int(raw)
            elif isinstance(f.default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        except ValueError as exc:
            shown = "(keys not shown)" if f.name == "api_keys" else repr(raw)  # secrets stay out of logs
            raise SettingsError(f"SWAPLINE_{f.name.upper()}={shown}: {exc}") from exc
    return Settings(**values)


def env_table() -> list[tuple[str, object]]:
    """Every variable with its default, for docs and `swapline --help`."""
    return [(f"SWAPLINE_{f.name.upper()}", f.default) for f in fields(Settings)]


def settings_env(settings: Settings) -> dict[str, str]:
    """The `SWAPLINE_*` variables that make `load_settings()` rebuild `settings` in a child process."""
    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name == "api_keys":
            value = ",".join(f"{key}:{role}" for key, role in value)
        env[f"SWAPLINE_{f.name.upper()}"] = str(value)
    return env
