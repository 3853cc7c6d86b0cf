"""The agent configuration: what a user saves over REST, versioned immutably in the store.

It extends the engine's `ConversationSettings` (turn-taking, interruption, idle, watchdog) with
prompt, providers, tools and delivery settings. Provider options are validated against each
adapter's own config model at save time, so a typo fails with 422 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipelines.settings import ConversationSettings
from providers import registry

BUILTIN_TOOLS = ("end_call", "transfer_call", "send_dtmf", "collect_digits")


class ProviderBlock(BaseModel):
    """`{provider: NAME, ...options, fallback: [ {provider: ..., ...}, ... ]}`."""

    model_config = ConfigDict(extra="allow")
    provider: str = Field(min_length=1)
    # Seconds to wait for the first result before switching to the next provider.
    timeout_s: float = Field(5.0, gt=0, le=120)
    fallback: list[ProviderBlock] = Field(default_factory=list)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def chain(self) -> list[ProviderBlock]:
        """This block followed by its fallbacks, in order."""
        return [self, *self.fallback]


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "GET"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0, le=120)


class ToolConfig(BaseModel):
    """A function the LLM may call: a webhook, or one of the builtins."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    webhook: WebhookTarget | None = None
    builtin: Literal["end_call", "transfer_call", "send_dtmf", "collect_digits"] | None = None
    # Builtin options, e.g. transfer_call: {"targets": {"sales": "+14155550100"}, "mode": "cold"}
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_target(self) -> ToolConfig:
        if (self.webhook is None) == (self.builtin is None):
            raise ValueError("a tool needs exactly one of 'webhook' or 'builtin'")
        if self.parameters.get("type") != "object":
            raise ValueError("parameters must be a JSON Schema with type 'object'")
        return self


class ToolsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hold_after_ms: int = Field(1500, ge=0, le=30000)
    hold_message: str = "One moment please."


class VoicemailSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # What to do when an outbound call reaches a machine.
    action: Literal["leave_message", "hangup"] = "hangup"
    message: str | None = None
    detect_timeout_s: float = Field(6.0, gt=0, le=30)


class PostCallSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary_prompt: str | None = None


class AgentConfig(ConversationSettings):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "AgentConfig"})

    name: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, description="System prompt")
    greeting: str | None = "Hello! How can I help you today?"
    speaks_first: bool = True
    language: str = "en-US"
    stt: ProviderBlock = Field(default_factory=lambda: ProviderBlock(provider="pocketsphinx"))
    llm: ProviderBlock = Field(default_factory=lambda: ProviderBlock(provider="llama_cpp"))
    tts: ProviderBlock = Field(default_factory=lambda: ProviderBlock(provider="piper"))
    voice: str | None = None
    tools: list[ToolConfig] = Field(default_factory=list)
    tool_settings: ToolsSettings = ToolsSettings()
    voicemail: VoicemailSettings = VoicemailSettings()
    post_call: PostCallSettings = PostCallSettings()
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    # Only these event types are sent to webhook_url (all when empty).
    webhook_events: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, tools: list[ToolConfig]) -> list[ToolConfig]:
        seen: set[str] = set()
        for t in tools:
            if t.name in seen:
                raise ValueError(f"duplicate tool name '{t.name}'")
            seen.add(t.name)
        return tools


def provider_errors(config: AgentConfig) -> list[InitErrorDetails]:
    """Check each provider block (and its fallbacks) against the adapter's config model.

    Locations are full paths such as `llm.fallback.0.temperature`.
    """
    errors: list[InitErrorDetails] = []
    for kind in ("stt", "llm", "tts"):
        block: ProviderBlock = getattr(config, kind)
        for i, b in enumerate(block.chain()):
            loc: tuple[str | int, ...] = (kind,) if i == 0 else (kind, "fallback", i - 1)
            try:
                registry.parse_config(kind, b.provider, b.options())
            except registry.UnknownProvider as exc:
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("unknown_provider", str(exc)),
                        loc=(*loc, "provider"),
                        input=b.provider,
                    )
                )
            except ValidationError as exc:
                for e in exc.errors():
                    errors.append(
                        InitErrorDetails(
                            type=PydanticCustomError("provider_option", e["msg"]),
                            loc=(*loc, *e["loc"]),
                            input=e.get("input"),
                        )
                    )
    return errors


def parse_agent_config(data: Any) -> AgentConfig:
    """Validate a whole agent config, provider options included.

    Raises pydantic.ValidationError whose error locations name each failing field. (Provider
    checks run here rather than in a model validator so their locations survive.)
    """
    config = AgentConfig.model_validate(data)
    errors = provider_errors(config)
    if errors:
        raise ValidationError.from_exception_data("AgentConfig", errors)
    return config
