"""Request and response bodies of the REST API (the agent config itself is
`app.agent_config.AgentConfig`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr

E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
CREDENTIAL_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- agents --------------------------------------------------------------------------------


class AgentOut(BaseModel):
    id: str
    name: str
    version: int = Field(description="The current version number")
    config: dict[str, Any] = Field(description="The current version's AgentConfig")
    created_at: datetime
    updated_at: datetime


class AgentList(BaseModel):
    items: list[AgentOut]


class AgentVersionOut(_Out):
    agent_id: str
    version: int
    config: dict[str, Any]
    created_at: datetime


class AgentVersionList(BaseModel):
    items: list[AgentVersionOut]


class ProblemItem(BaseModel):
    field: str
    message: str


class ValidationResult(BaseModel):
    valid: bool
    problems: list[ProblemItem]


# --- numbers -------------------------------------------------------------------------------


class NumberIn(_In):
    agent_id: str = Field(min_length=1, max_length=32)


class NumberOut(_Out):
    number: str
    agent_id: str
    created_at: datetime
    updated_at: datetime


class NumberList(BaseModel):
    items: list[NumberOut]


# --- credentials ---------------------------------------------------------------------------


class CredentialIn(_In):
    # SecretStr keeps the value out of reprs, logs and error messages.
    value: SecretStr = Field(description="The secret; stored encrypted, never returned")


class CredentialOut(_Out):
    name: str
    created_at: datetime
    updated_at: datetime


class CredentialList(BaseModel):
    items: list[CredentialOut]


# --- api keys ------------------------------------------------------------------------------


class ApiKeyIn(_In):
    name: str = Field("", max_length=200)


class ApiKeyOut(_Out):
    id: str
    name: str
    prefix: str = Field(description="First characters of the key, to recognise it")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="The API key. Shown only in this response.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


# --- sessions ------------------------------------------------------------------------------

SessionStatus = Literal["ringing", "active", "ended", "failed", "interrupted"]


class SessionOut(_Out):
    id: str
    agent_id: str | None
    agent_version: int | None
    call_uuid: str | None
    request_uuid: str | None
    stream_id: str | None
    direction: str
    from_number: str
    to_number: str
    status: str
    node_id: str | None = Field(description="Replica that hosted the call")
    end_reason: str | None
    hangup_cause: str | None
    created_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("metadata_", "metadata"))
    voicemail: str | None
    report: dict[str, Any] | None


class SessionPageOut(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class TurnOut(_Out):
    id: str
    idx: int
    role: str
    text: str
    heard_text: str | None
    interrupted: bool
    started_at: datetime
    ended_at: datetime | None
    latency: dict[str, Any] | None


class ToolCallOut(_Out):
    id: str
    turn_id: str | None
    name: str
    arguments: dict[str, Any]
    result: Any
    status: str
    error: str | None
    started_at: datetime
    latency_ms: float | None


class UsageRecordOut(_Out):
    kind: str
    provider: str
    model: str
    metric: str
    quantity: float
    created_at: datetime


class SessionDetail(SessionOut):
    state: dict[str, Any]
    turns: list[TurnOut]
    tool_calls: list[ToolCallOut]
    usage: list[UsageRecordOut]


# --- usage ---------------------------------------------------------------------------------


class UsageItem(BaseModel):
    key: str | None = Field(description="Agent id, provider name, day (YYYY-MM-DD) or kind")
    kind: str | None = Field(None, description="Provider kind (only with group_by=provider)")
    metric: str
    quantity: float
    records: int


class UsageReport(BaseModel):
    group_by: str
    from_: datetime | None = Field(None, serialization_alias="from")
    to: datetime | None = None
    items: list[UsageItem]
