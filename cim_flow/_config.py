"""Service configuration: the seed guide's TOML sections, validated.

Unknown sections or keys and bad values are a :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    pass


_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$", re.I)
_DUR_UNIT = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_UNIT = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30,
              "tb": 10**12, "tib": 2**40, None: 1}


def duration(value, key) -> float:
    """Seconds from ``"10ms"``, ``"5s"``, ``"2m"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like '10ms', got {value!r}")
    if isinstance(value, (int, float)):
        s = float(value)
    else:
        m = _DUR.match(str(value))
        if not m:
            raise ConfigError(f"{key}: expected a duration like '10ms' or '5s', got {value!r}")
        s = float(m.group(1)) * _DUR_UNIT[m.group(2)]
    if s < 0:
        raise ConfigError(f"{key}: must not be negative")
    return s


def size(value, key) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like '64KB', got {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{key}: expected a size like '64KB' or '8GB', got {value!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _SIZE_UNIT[unit])


@dataclass
class EventProcessing:
    batch_size: int = 1000
    batch_timeout: float = 0.0005
    max_concurrent_batches: int = 1
    enable_adaptive_batching: bool = True
    min_batch_size: int = 10
    max_batch_size: int = 65536
    target_latency: float = 0.005


@dataclass
class QueryCache:
    enabled: bool = True
    max_entries: int = 10000
    ttl_seconds: float = 300.0
    cache_key_prefix: str = "cim:query:"
    warm_cache_on_startup: bool = False
    warm_cache_queries: list = field(default_factory=list)


@dataclass
class Nats:
    url: str = ""
    user: str = ""
    password: str = ""
    token: str = ""
    credentials: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    connection_timeout: float = 5.0
    min_connections: int = 1
    max_connections: int = 2
    idle_timeout: float = 300.0
    write_buffer_size: int = 65536
    read_buffer_size: int = 65536
    pending_size: int = 8 * 2**20


@dataclass
class JetStream:
    enabled: bool = True
    stream: str = "CIM_GRAPH_EVENTS"
    subjects: list = field(default_factory=lambda: ["event.graph.>"])
    durable: str = "cim_flow"
    duplicate_window: float = 120.0
    storage: str = "file"
    # the embedded server's JetStream (with --nats-url they are that server's business):
    store_dir: str = ""                 # "" = <data-dir>/jetstream
    max_memory_store: int = 0           # 0 = the server's default (a share of RAM / disk)
    max_file_store: int = 0
    sync_interval: float | str = 0.0    # seconds between fsyncs, or "always"; 0 = default (2 min)
    max_outstanding_catchup: int = 0
    compression: str = "none"           # the stream's: "none" or "s2"
    pull_batch: int = 16384
    # bytes one pull request may bring (two are kept open): the server cuts off a client
    # with more than its max_pending (64 MiB by default) waiting to be read as a "slow
    # consumer", and 16384 Arrow batch messages of ~1 MB each would be 16 GB
    pull_max_bytes: int = 16 * 2**20
    raw_consumer: bool = True
    # A stream that keeps the service's results (projection.graph.>): "" = none, the
    # updates are plain core NATS messages (at most once).  With one, a reader with a
    # durable consumer (Client.updates(durable=...)) misses none, and the service makes
    # sure it ends at the current state after a restart or a lost connection.
    results_stream: str = ""
    results_max_age: float = 86400.0    # seconds an update is kept; 0 = no limit
    results_max_bytes: int = 1 << 30    # the stream's size cap (oldest dropped first); 0 = none

    def server_limits(self) -> dict:
        return {"max_memory_store": self.max_memory_store, "max_file_store": self.max_file_store,
                "sync_interval": self.sync_interval, "max_outstanding_catchup": self.max_outstanding_catchup}


@dataclass
class Queries:
    default_limit: int = 10000
    max_limit: int = 1_000_000
    min_version_timeout: float = 5.0
    raw_connection: bool = True  # answer queries on a lean connection (see _service_queries._on_query_block)


@dataclass
class Snapshots:
    enabled: bool = True
    every_events: int = 1_000_000
    every_seconds: float = 300.0
    keep: int = 3
    background: bool = True  # periodic snapshots written by a forked child (no ingest stall)


@dataclass
class Projection:
    """The engine the service keeps: room to start with (0: grow as needed, by half at a
    time; a snapshot's engine keeps its own) and when to compact (see ``Engine.compact_min``)."""
    graph_capacity: int = 0
    node_capacity: int = 0
    edge_capacity: int = 0
    compact_min: int = 1 << 16  # -1: never compact on its own

    def engine(self):
        from .engine import Engine

        eng = Engine(self.graph_capacity or 1024, node_capacity=self.node_capacity or None,
                     edge_capacity=self.edge_capacity or None)
        eng.compact_min = self.compact_min
        return eng


@dataclass
class TokioRuntime:
    """The seed's Rust async-runtime section: taken (so the seed's file loads) and said
    not to apply at start; cim_flow runs one asyncio loop plus numba's kernel threads."""
    worker_threads: int = 0
    max_blocking_threads: int = 0
    thread_stack_size: int = 0
    thread_keep_alive: float = 0.0


@dataclass
class Config:
    event_processing: EventProcessing = field(default_factory=EventProcessing)
    query_cache: QueryCache = field(default_factory=QueryCache)
    nats: Nats = field(default_factory=Nats)
    jetstream: JetStream = field(default_factory=JetStream)
    queries: Queries = field(default_factory=Queries)
    snapshots: Snapshots = field(default_factory=Snapshots)
    projection: Projection = field(default_factory=Projection)
    tokio_runtime: TokioRuntime = field(default_factory=TokioRuntime)

    @classmethod
    def from_toml(cls, path) -> "Config":
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for sec, values in data.items():
            if sec not in sections:
                raise ConfigError(f"unknown section [{sec}] (known: {', '.join(sections)})")
            if not isinstance(values, dict):
                raise ConfigError(f"[{sec}] must be a table")
            target = getattr(cfg, sec)
            fields = {f.name: f for f in dataclasses.fields(target)}
            for key, value in values.items():
                name = f"{sec}.{key}"
                if key not in fields:
                    raise ConfigError(f"unknown key {name} (known: {', '.join(fields)})")
                setattr(target, key, _coerce(name, fields[key], getattr(target, key), value))
        cfg.validate()
        return cfg

    def notices(self, external_server: bool = False) -> list[str]:
        """Settings the seed's files carry that cim_flow takes but cannot honour as asked:
        said once at start rather than ignored in silence."""
        out = []
        n = self.event_processing.max_concurrent_batches
        if n > 1:
            out.append(f"event_processing.max_concurrent_batches = {n}: batches are applied one at a "
                       "time, in stream order (the version is the exactly-once checkpoint); the server "
                       "always holds the next pull request while one is applied")
        pool = [k for k in ("min_connections", "max_connections", "idle_timeout", "write_buffer_size",
                            "read_buffer_size") if getattr(self.nats, k) != getattr(Nats, k)]
        if pool:
            out.append(f"nats.{', nats.'.join(pool)}: a connection pool's settings; the service keeps its "
                       "own few connections (management, events, queries) open for its whole run")
        rt = [k for k in ("worker_threads", "max_blocking_threads", "thread_stack_size", "thread_keep_alive")
              if getattr(self.tokio_runtime, k) != getattr(TokioRuntime, k)]
        if rt:
            out.append(f"tokio_runtime.{', tokio_runtime.'.join(rt)}: the Rust runtime's settings; cim_flow runs "
                       "one asyncio event loop, and its parallel kernels use numba's threads (NUMBA_NUM_THREADS, "
                       "one a core by default)")
        if external_server:
            js = self.jetstream
            set_ = [k for k in ("store_dir", *js.server_limits()) if getattr(js, k)]
            if set_:
                out.append(f"jetstream.{', jetstream.'.join(set_)}: server settings, applied to the "
                           "embedded nats-server only; the server at --nats-url keeps its own")
        return out

    def validate(self) -> None:
        ep = self.event_processing
        for k in ("batch_size", "min_batch_size", "max_batch_size", "max_concurrent_batches"):
            if getattr(ep, k) < 1:
                raise ConfigError(f"event_processing.{k} must be >= 1")
        if ep.min_batch_size > ep.max_batch_size:
            raise ConfigError("event_processing.min_batch_size must be <= max_batch_size")
        if not ep.min_batch_size <= ep.batch_size <= ep.max_batch_size:
            raise ConfigError("event_processing.batch_size must lie in [min_batch_size, max_batch_size]")
        if ep.batch_timeout <= 0:
            raise ConfigError("event_processing.batch_timeout must be > 0")
        pr = self.projection
        for k in ("graph_capacity", "node_capacity", "edge_capacity"):
            if not 0 <= getattr(pr, k) <= 1 << 27:
                raise ConfigError(f"projection.{k} must be in [0, 134217728] (0: grow as needed)")
        if pr.compact_min < -1:
            raise ConfigError("projection.compact_min must be >= -1 (-1: never compact on its own)")
        if self.query_cache.max_entries < 0:
            raise ConfigError("query_cache.max_entries must be >= 0")
        if self.query_cache.ttl_seconds < 0:
            raise ConfigError("query_cache.ttl_seconds must be >= 0")
        if self.jetstream.storage not in ("file", "memory"):
            raise ConfigError("jetstream.storage must be 'file' or 'memory'")
        if self.jetstream.compression not in ("none", "s2"):
            raise ConfigError(f"jetstream.compression must be 'none' or 's2', got {self.jetstream.compression!r}")
        for k in ("max_memory_store", "max_file_store", "max_outstanding_catchup"):
            if getattr(self.jetstream, k) < 0:
                raise ConfigError(f"jetstream.{k} must not be negative")
        if self.jetstream.results_stream and not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", self.jetstream.results_stream):
            raise ConfigError(f"jetstream.results_stream: a stream name is letters, digits, '_' and '-', "
                              f"got {self.jetstream.results_stream!r}")
        if self.jetstream.results_stream and self.jetstream.results_stream == self.jetstream.stream:
            raise ConfigError("jetstream.results_stream must differ from jetstream.stream")
        for k in ("results_max_age", "results_max_bytes"):
            if getattr(self.jetstream, k) < 0:
                raise ConfigError(f"jetstream.{k} must not be negative")
        if self.queries.default_limit < 1:
            raise ConfigError("queries.default_limit must be >= 1")


_DURATION_KEYS = {"batch_timeout", "target_latency", "connection_timeout", "idle_timeout",
                  "duplicate_window", "sync_interval", "min_version_timeout", "every_seconds",
                  "thread_keep_alive", "results_max_age"}
_SIZE_KEYS = {"write_buffer_size", "read_buffer_size", "pending_size", "max_memory_store",
              "max_file_store", "max_outstanding_catchup", "pull_max_bytes", "thread_stack_size",
              "results_max_bytes"}


def _coerce(name, f, default, value):
    key = name.split(".")[-1]
    if key == "sync_interval" and value == "always":  # nats-server's own word: fsync every write
        return "always"
    if key in _DURATION_KEYS:
        return duration(value, name)
    if key in _SIZE_KEYS:
        return size(value, name)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return value
    return value
