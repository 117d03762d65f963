"""Configuration: environment variables prefixed ``TIDINGS_``, read once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, IPvAnyNetwork, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Every knob of a tidings node. Build one with ``Settings()`` and pass it down."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="ignore")

    # Storage
    data_dir: Path = Path("./data")
    database_url: str = Field(
        default="",
        description="SQLAlchemy async URL; empty means SQLite inside the data dir.",
    )
    max_upload_bytes: int = Field(default=1 * GiB, gt=0)
    database_timeout: float = Field(
        default=10.0,
        ge=0,
        description="seconds PostgreSQL has to answer a statement, or to accept a connection, "
        "before it fails and its request answers 503: a database gone silent (a cut network, "
        "a failover whose old address drops packets) fails requests instead of hanging "
        "them; 0: wait as long as the connection lasts. Schema migrations are not bounded",
    )

    # HTTP and sessions
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    session_cookie_secure: bool = False
    session_max_age: int = Field(default=14 * 24 * 3600, gt=0, description="seconds")
    login_max_failures: int = Field(
        default=5, gt=0, description="failed logins per (username, client address) per window"
    )
    login_max_address_failures: int = Field(
        default=20, gt=0, description="failed logins per client address per window"
    )
    login_failure_window: float = Field(default=300.0, gt=0, description="seconds")
    password_hash_concurrency: int = Field(
        default=2, gt=0, description="argon2 hashes computed at once (worker threads)"
    )
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="addresses or networks whose X-Forwarded-For / Forwarded are believed",
    )
    metrics_token: str = Field(default="", description="if set, /metrics needs this bearer")
    create_admin: bool = Field(default=True, description="create `admin` on first start")
    docs: bool = Field(default=True, description="serve the API docs at /docs and /redoc")
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's OpenTelemetry traces, metrics and logs of each request and "
        "connection, for the providers an OpenTelemetry SDK sets up in the process; off, "
        "nothing is asked of OpenTelemetry per request",
    )

    # Real-time
    broker_url: str = "memory://"
    broker_channel: str = Field(
        default="tidings", description="pub/sub channel; distinct per deployment on one Redis"
    )
    broker_timeout: float = Field(
        default=2.0,
        gt=0,
        description="seconds a Redis command (a publish, a presence read or update) may "
        "take before it counts as failed: a hung Redis delays a change's answer and a "
        "subscribe by this much at most, and the change's event still arrives from the log",
    )
    heartbeat_interval: float = Field(default=30.0, gt=0)
    ws_ping_interval: float = Field(default=20.0, gt=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)
    ws_max_queue_messages: int = Field(default=1000, gt=0)
    ws_max_queue_bytes: int = Field(default=4 * MiB, gt=0)
    ws_max_message_bytes: int = Field(default=64 * KiB, gt=0)
    ws_max_subscriptions: int = Field(default=200, gt=0)
    ws_rate_limit: float = Field(default=20.0, gt=0, description="client messages per second")
    ws_rate_burst: int = Field(default=60, gt=0)
    ws_close_timeout: float = Field(default=10.0, gt=0)
    ws_reconnect_spread: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="seconds over which clients should spread their reconnects after this "
        "node stops (suggested in the 1012 close reason)",
    )
    access_cache_entries: int = Field(
        default=100_000,
        ge=0,
        description="project grants (user, project) a node remembers for 30 s to answer "
        "subscribes without the database; 0: read every time",
    )
    resume_tail_bytes: int = Field(
        default=16 * MiB,
        ge=0,
        description="memory the newest events of active projects may take on a node (their "
        "frames and about 200 bytes each besides), kept to answer resumes without the "
        "database; 0: none",
    )
    event_history: int = Field(default=10_000, gt=0)
    replay_concurrency: int = Field(
        default=32, gt=0, description="replay pages read from the event log at once per node"
    )
    gc_threshold: int = Field(
        default=50_000,
        ge=0,
        description="allocations between runs of Python's garbage collector on its youngest "
        "generation (Python's default: 700); 0 leaves the interpreter's setting",
    )
    ws_max_connections_per_user: int = Field(
        default=50, gt=0, description="open /ws connections per user per node; beyond: 1013"
    )
    max_connections: int | None = Field(
        default=None,
        gt=0,
        description="TCP connections per node (HTTP and /ws) before new requests get 503; "
        "default: the open-file limit less a margin",
    )
    listen_backlog: int = Field(
        default=16384,
        gt=0,
        description="connections the kernel holds for the node before it accepts them (the "
        "listen backlog; Linux caps it at net.core.somaxconn): a fleet reconnecting at once "
        "after a restart waits there instead of being refused or reset",
    )
    snapshot_max_files: int = Field(
        default=10_000,
        ge=0,
        description="files a subscribe snapshot holds at most (then `files_truncated`)",
    )
    head_sync_interval: float = Field(
        default=5.0,
        gt=0,
        description="seconds between checks of subscribed projects' newest seq against the "
        "log, which find events whose broker message was lost",
    )
    presence_expiry: float = Field(
        default=20.0,
        gt=0,
        description="seconds a node's viewers outlive its last presence refresh (every "
        "quarter of this): a dead node's viewers leave within 1.25 times this",
    )

    # Processes
    progress_interval: float = Field(default=0.25, ge=0)
    max_concurrent_processes: int = Field(default=2, gt=0)
    process_lease: float = Field(
        default=30.0,
        gt=0,
        description="seconds; a queued or running process whose node has not renewed its "
        "lease for this long is failed as `interrupted`",
    )
    max_active_processes: int = Field(
        default=10, gt=0, description="queued or running processes per project"
    )
    result_retention: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="seconds a succeeded process keeps its result"
    )
    external_timeout: float = Field(
        default=3600.0,
        gt=0,
        description="seconds an external process may go without a report before it fails",
    )
    sweep_interval: float = Field(
        default=30.0, gt=0, description="seconds between a node's expiry and timeout sweeps"
    )

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tidings.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"
