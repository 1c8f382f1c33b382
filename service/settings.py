"""The one settings object of the service, read from the environment.

Every knob lives here (FastAPI full-stack-template style) so that no other module reads
`os.environ`. Variables use the prefix ``MRDIB_`` (``MRDIB_ARTIFACTS``, ``MRDIB_ADMIN_TOKEN`` ...)
except ``REDIS_URL``, which follows the convention of every Redis client and PaaS.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrdib.artifact.store import DEFAULT_ROOT
from mrdib.redis_keys import DEFAULT_SHARDS, DEFAULT_STREAM, KeyLayout, RedisMode, check_name

# Secrets: each may also be given as a file (`MRDIB_<NAME>_FILE`), never on a command line.
SECRET_FIELDS = ("admin_token", "events_token", "metrics_token")


class Settings(BaseSettings):
    """Service configuration. Defaults suit the embedded demo (no Redis, one process)."""

    # hide_input_in_errors: a validation error must not print the values it got (they may hold the tokens).
    model_config = SettingsConfigDict(env_prefix="MRDIB_", extra="ignore", frozen=True, hide_input_in_errors=True)

    artifacts: Path = Field(
        default=DEFAULT_ROOT,
        description="artifacts root holding `current` and versions; the default, relative to the working directory, "
                    "is where quickstart.sh publishes when run from the repository root")
    require_model: bool = Field(
        default=False,
        description="refuse to start (exit non-zero) when no valid model can be loaded at start, instead of "
                    "serving 503 until one is published")
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "MRDIB_REDIS_URL"),
        description="redis://host:port/db (cluster mode: any one node); unset = in-process LRU cache + local event "
                    "file",
    )
    redis_mode: RedisMode = Field(
        default="single", description="single: one Redis (or a primary behind a proxy/sentinel address); cluster: a "
                                      "Redis Cluster, REDIS_URL naming any node (the others are discovered)")
    redis_key_prefix: str = Field(default="", description="prefix of every Redis key (tests use a unique one); no "
                                                          "braces (mrdib/redis_keys.py)")
    redis_pool_size: int = Field(default=32, ge=1, description="max connections of the blocking pool (cluster mode: "
                                                               "per node, and a full pool fails at once)")
    redis_pool_timeout_s: float = Field(default=0.2, gt=0, description="wait for a free pooled connection")
    redis_socket_timeout_s: float = Field(default=0.25, gt=0, description="per-command socket timeout")
    redis_connect_timeout_s: float = Field(default=0.25, gt=0)
    redis_check_interval_s: float = Field(default=1.0, gt=0, description="health probe / WAL replay period")
    redis_cluster_retries: int = Field(
        default=3, ge=0, le=10,
        description="cluster mode: retries of a command after a connection error, timeout or CLUSTERDOWN, each after "
                    "a short jittered backoff (<= redis_cluster_backoff_cap_s) and a topology refresh. Bounds how "
                    "long a request waits on a dead node before its event goes to the WAL (the client's own "
                    "default, 10 retries backing off to 1 s each, kept a request waiting over 10 s)")
    redis_cluster_backoff_cap_s: float = Field(default=0.2, gt=0, le=5,
                                               description="cluster mode: longest backoff between two retries")
    user_vector_ttl_s: int = Field(default=3600, ge=1, description="TTL of cached user vectors")
    history_ttl_s: int = Field(default=30 * 86400, ge=1, description="TTL of a user's recent-event list")
    dedupe_ttl_s: int = Field(default=7 * 86400, ge=1,
                              description="how long the event ids a user sent are remembered (per-user dedupe)")
    history_cap: int = Field(default=50, ge=1, description="recent events kept per user")
    lru_size: int = Field(default=100_000, ge=1, description="users kept by the in-process cache")
    near_cache_ttl_s: float = Field(
        default=10.0, ge=0, description="with Redis: lifetime of a user state kept in the worker's near cache "
                                        "(coherent through invalidation messages; this bounds the worst case). "
                                        "0 = every request reads Redis")
    near_cache_size: int = Field(default=10_000, ge=1, description="users kept by each worker's near cache")
    stream: str = Field(default=DEFAULT_STREAM, min_length=1,
                        description="base name of the event streams: shard s is `<stream>:{u<s>}`; no braces")
    stream_shards: int = Field(
        default=DEFAULT_SHARDS, ge=1, le=16384,
        description="event streams the users are spread over (crc32(user id) % shards); `mrdib retrain` must use "
                    "the same number. Change it only with the service stopped and the streams drained by a retrain")
    stream_maxlen: int | None = Field(default=None, ge=1,
                                      description="approximate XADD MAXLEN per shard stream; None keeps all")
    event_batch_max: int = Field(
        default=256, ge=1, le=10_000, description="most events sent to Redis in one pipelined round trip "
                                                  "(group commit, see service/events.py); 1 = one call each")
    wal_path: Path = Field(default=Path("events.wal.jsonl"), description="local event file / write-ahead log")
    item_wal_path: Path | None = Field(
        default=None, description="with Redis: write-ahead file of admin item changes accepted while Redis was down "
                                  "(replayed when it is back); unset = beside `wal_path`, see `item_wal_file`")

    cpu_threads: int = Field(default=4, ge=1, description="size of the thread pool running ONNX and FAISS")
    ort_intra_threads: int = Field(default=1, ge=1, description="onnxruntime intra-op threads per session")
    faiss_threads: int = Field(default=1, ge=1, description="OpenMP threads of FAISS searches")
    inline_search_max_items: int = Field(
        default=4096, ge=0,
        description="catalogues up to this size are searched on the event loop when the user vector is known "
                    "(a thread-pool hop costs more than the search); bigger ones, and the towers, use the pool. "
                    "0 = always the pool")
    item_sync_interval_s: float = Field(
        default=0.25, gt=0, description="how often each worker checks Redis for admin item changes of other workers")
    use_gpu: bool = Field(default=True, description="use CUDA EP / faiss-gpu when they are installed and a GPU exists")

    admin_token: SecretStr | None = Field(default=None, description="bearer token of admin routes; unset = disabled")
    admin_token_file: Path | None = Field(
        default=None, description="file holding the admin token (Docker/Kubernetes secrets); instead of ADMIN_TOKEN")
    events_token: SecretStr | None = Field(
        default=None, description="bearer token POST /events requires (the admin token is accepted too); unset = "
                                  "/events is open, for local use only (a warning is logged at start)")
    events_token_file: Path | None = Field(default=None, description="file holding the events token")
    metrics_token: SecretStr | None = Field(
        default=None, description="bearer token GET /metrics requires (the admin token is accepted too); unset = "
                                  "/metrics is public (scrape it over a private network)")
    metrics_token_file: Path | None = Field(default=None, description="file holding the metrics token")
    event_rate_per_s: float = Field(
        default=10.0, ge=0, description="events per second each user may send, sustained (token bucket in Redis, "
                                        "in-process while Redis is down); 0 = no limit")
    event_burst: int = Field(default=100, ge=1, description="events a user may send at once (the bucket's size)")
    poll_interval_s: float = Field(default=10.0, ge=0, description="period of `current` polling; 0 disables it")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger request bodies get 413")
    max_request_history: int = Field(default=1000, ge=1, description="longer `history` gets 422")
    max_exclude: int = Field(default=10_000, ge=0, description="longer `exclude` gets 422")
    max_batch: int = Field(default=256, ge=1, le=10_000,
                           description="most requests in one POST /recommend/batch (more gets 422); the whole body "
                                       "still counts against MRDIB_MAX_BODY_BYTES")
    gc_freeze: bool = Field(
        default=True, description="after each model load, collect once and gc.freeze() the survivors so that "
                                  "full GC passes stop stalling requests (see service/heap.py)")
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, le=1 << 20,
        description="request line + headers of one request: larger ones get 431 and the connection is closed")
    log_level: str = Field(default="INFO")
    access_log: bool = Field(
        default=False, description="one log line per request (uvicorn's access log); secrets in query strings are "
                                   "redacted either way")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """`X_TOKEN_FILE` names a file holding the secret (mounted Docker/Kubernetes secrets), so that it never
        has to be in the environment of every process or on a command line. Setting both is an error."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in SECRET_FIELDS:
            path = data.get(f"{name}_file")
            if path is None or str(path) == "":
                continue
            var = f"MRDIB_{name.upper()}"
            if data.get(name) not in (None, ""):
                raise ValueError(f"set {var} or {var}_FILE, not both")
            try:
                secret = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{var}_FILE: cannot read {path}: {e}") from None
            if not secret:
                raise ValueError(f"{var}_FILE: {path} is empty")
            data[name] = secret
        return data

    @field_validator(*SECRET_FIELDS, mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        """`MRDIB_ADMIN_TOKEN=` (empty) means no token, not a token that an empty bearer would match."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("redis_key_prefix", "stream")
    @classmethod
    def _no_braces(cls, v: str, info) -> str:
        return check_name(info.field_name.replace("_", " "), v)

    @property
    def layout(self) -> KeyLayout:
        """Redis key names (hash-tagged, the same in both modes: mrdib/redis_keys.py)."""
        return KeyLayout(prefix=self.redis_key_prefix, stream=self.stream, shards=self.stream_shards)

    @model_validator(mode="after")
    def _distinct_wal_files(self) -> Settings:
        """Events and item changes have different line formats: one file for both would make each replay
        reject the other's lines."""
        if self.item_wal_file.resolve() == self.wal_path.resolve():
            raise ValueError(f"item_wal_path must differ from wal_path ({self.wal_path})")
        return self

    def secret_values(self) -> tuple[str, ...]:
        """The configured tokens, for log redaction (service/logs.py)."""
        return tuple(t.get_secret_value() for t in (getattr(self, n) for n in SECRET_FIELDS) if t is not None)

    @property
    def item_wal_file(self) -> Path:
        """Where pending admin item changes go: `item_wal_path`, or `<wal_path stem>.items<suffix>` beside the
        event WAL, so that the workers of one host (which share `wal_path`) share it too and each of them
        applies the changes any of them accepted while Redis was down."""
        if self.item_wal_path is not None:
            return self.item_wal_path
        return self.wal_path.with_name(f"{self.wal_path.stem}.items{self.wal_path.suffix or '.jsonl'}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build `Settings(...)` directly instead."""
    return Settings()
