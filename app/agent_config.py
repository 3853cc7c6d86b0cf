"""The agent configuration: what a user saves over REST, versioned immutably in the store.

It extends the engine's `ConversationSettings` (turn-taking, interruption, idle, watchdog) with
prompt, providers, tools and delivery settings. Provider options are validated against each
adapter's own config model at save time, so a typo fails with 422 naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipelines.audio.backgrounds import background
from pipelines.settings import ConversationSettings
from providers import registry
from providers.base import SecretRef

BUILTIN_TOOLS = ("end_call", "transfer_call", "send_dtmf", "collect_digits", "collect_email",
                 "collect_address", "collect_phone", "collect_name", "collect_dob",
                 "collect_credit_card", "handoff")
PROVIDER_KINDS = ("stt", "llm", "tts")
TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
# A fallback may have fallbacks of its own (tried depth-first), down to this depth: a flat list
# says the same thing, and a bounded tree keeps the published schema finite.
MAX_FALLBACK_DEPTH = 2


class ProviderChoice(BaseModel):
    """`{provider: NAME, ...options}`: the options are checked against the adapter's model."""

    model_config = ConfigDict(extra="allow")
    provider: str = Field(min_length=1)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ProviderBlock(ProviderChoice):
    """`{provider: NAME, ...options, fallback: [ {provider: ..., ...}, ... ]}`."""

    # Seconds to wait for the first result before switching to the next provider.
    timeout_s: float = Field(5.0, gt=0, le=120)
    fallback: list[ProviderBlock] = Field(default_factory=list)


class STTBlock(ProviderBlock):
    """The agent's `stt` block: a provider block plus how the whole chain recovers from a broken
    stream (see providers.stt_recovery). These settings belong here only, not in fallbacks."""

    # Reopenings of a provider whose stream broke, before its fallback takes over.
    reconnect_attempts: int = Field(3, ge=0, le=10)
    # Wall-clock cap on one episode of reopenings: past it the fallback takes over (or the
    # error surfaces) instead of the caller talking into a void. Once the caller waits for a
    # final, a provider with a fallback gets only its `timeout_s` from then.
    reconnect_budget_s: float = Field(3.0, gt=0, le=60)
    # Most audio of the current utterance kept to replay into a new stream.
    replay_max_s: float = Field(30.0, ge=1.0, le=120.0)


STT_RECOVERY_FIELDS = ("reconnect_attempts", "reconnect_budget_s", "replay_max_s")


class S2SBlock(ProviderChoice):
    """`{provider: openai_realtime | gemini_live | azure_openai, model, voice, api_key, ...}`: a
    speech-to-speech model takes the call instead of stt/llm/tts."""

    def speaks_text(self) -> bool:
        """`output: text`: the model writes and the agent's `tts` speaks (hybrid mode)."""
        return self.options().get("output") == "text"


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "GET"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0, le=120)


class ToolConfig(BaseModel):
    """A function the LLM may call: a webhook, one of the builtins, or a tool the agent's
    customer app runs over its WebSocket (`websocket: true`)."""

    # The schema says what `_one_target` checks: exactly one of webhook, builtin and websocket.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["webhook"], "properties": {"webhook": {"type": "object"}}},
        {"required": ["builtin"], "properties": {"builtin": {"type": "string"}}},
        {"required": ["websocket"], "properties": {"websocket": {"const": True}}},
    ]})
    name: str = Field(pattern=TOOL_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments (an object)",
        json_schema_extra={"required": ["type"], "properties": {"type": {"const": "object"}}},
    )
    webhook: WebhookTarget | None = None
    builtin: Literal["end_call", "transfer_call", "send_dtmf", "collect_digits", "collect_email",
                     "collect_address", "collect_phone", "collect_name", "collect_dob",
                     "collect_credit_card", "handoff"] | None = None
    # Run by the customer app on the agent's `websocket_url` (managed mode): `tool.called` goes
    # to the app, which answers with `tool.result` or `tool.error`.
    websocket: bool = False
    # Builtin options, e.g. transfer_call: {"targets": {"sales": "+14155550100"}, "mode": "cold"}
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_target(self) -> ToolConfig:
        targets = (self.webhook is not None) + (self.builtin is not None) + self.websocket
        if targets != 1:
            raise ValueError("a tool needs exactly one of 'webhook', 'builtin' or "
                             "'websocket: true'")
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


class AppSocketSettings(BaseModel):
    """How the call talks to the agent's customer app (`websocket_url`)."""

    model_config = ConfigDict(extra="forbid")
    connect_timeout_s: float = Field(5.0, gt=0, le=60)
    # Tries at call start (backoff 0.25 s, doubling); mid-call a dropped socket is reopened once.
    connect_attempts: int = Field(3, ge=1, le=10)
    # Text mode: wait this long for the app's first token (each extend_wait adds as much again).
    reply_timeout_s: float = Field(5.0, gt=0, le=120)
    # Managed mode: wait this long for a websocket tool's result.
    tool_timeout_s: float = Field(20.0, gt=0, le=300)


AgentMode = Literal["managed", "text", "audio"]
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
MAX_MCP_SERVERS = 10


def _check_header_names(headers: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
    for name in headers:
        if not re.match(_HEADER_NAME, name):
            raise ValueError(f"not an HTTP header name: {name!r}")
        if name.lower().startswith("x-phonebooth-"):
            raise ValueError(f"{name}: X-Phonebooth-* headers are Phonebooth's own")
    return headers


class MCPServerConfig(BaseModel):
    """An MCP tool server (docs/events-and-tools.md#mcp-servers): its tools are listed at call
    start and join the agent's own."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://[^\s/?#]+[^\s]*$", max_length=2000)
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    # Sent on every request: a literal value or a stored credential / environment variable.
    headers: dict[str, str | SecretRef] = Field(default_factory=dict)
    # The server's tool names (as it lists them) the LLM may use; all of them when absent.
    allowed_tools: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=200, json_schema_extra={"uniqueItems": True})
    # One tool call, connection included.
    timeout_s: float = Field(10.0, gt=0, le=120)
    # Listing the tools at call start (the call waits for it, at most this long).
    connect_timeout_s: float = Field(3.0, gt=0, le=30)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
        return _check_header_names(headers)

    @field_validator("allowed_tools")
    @classmethod
    def _tool_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError("duplicate tool name")
        return names


class BackgroundSettings(BaseModel):
    """A sound under the whole call: alone while the agent is silent, under its voice."""

    model_config = ConfigDict(extra="forbid")
    sound: str = Field(min_length=1, description="hold_music, office or hum, or a base64 WAV")
    volume: float = Field(0.2, ge=0.0, le=1.0)
    loop: bool = True

    @field_validator("sound")
    @classmethod
    def _playable(cls, v: str) -> str:
        try:
            background(v)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("sound: ")) from None
        return v


class RecordingSettings(BaseModel):
    """Record the call (docs/recording.md): the caller and what the caller heard."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    # stereo: caller left, agent right; mono: the two mixed.
    channels: Literal["mono", "stereo"] = "stereo"
    # Spoken before the greeting when recording is on (not interruptible), e.g. "This call may
    # be recorded."
    consent_message: str | None = Field(None, max_length=1000)

    @field_validator("consent_message")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None


class PostCallSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary_prompt: str | None = None


# The embedded stack an agent uses when its config names no provider for a kind.
DEFAULT_PROVIDERS = {"stt": "whisper", "llm": "llama_cpp", "tts": "piper"}


class AgentConfig(ConversationSettings):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "AgentConfig"})

    name: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, description="System prompt")
    greeting: str | None = "Hello! How can I help you today?"
    speaks_first: bool = True
    language: str = "en-US"
    stt: STTBlock = Field(
        default_factory=lambda: STTBlock(provider=DEFAULT_PROVIDERS["stt"]))
    llm: ProviderBlock = Field(
        default_factory=lambda: ProviderBlock(provider=DEFAULT_PROVIDERS["llm"]))
    tts: ProviderBlock = Field(
        default_factory=lambda: ProviderBlock(provider=DEFAULT_PROVIDERS["tts"]))
    voice: str | None = None
    # A speech-to-speech model in place of the stt/llm/tts chain. When stt, llm and tts are also
    # given they take the call if the s2s provider fails at call start.
    s2s: S2SBlock | None = None
    tools: list[ToolConfig] = Field(default_factory=list)
    tool_settings: ToolsSettings = ToolsSettings()
    voicemail: VoicemailSettings = VoicemailSettings()
    post_call: PostCallSettings = PostCallSettings()
    recording: RecordingSettings = RecordingSettings()
    background: BackgroundSettings | None = None
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    # Only these event types are sent to webhook_url (all when empty).
    webhook_events: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # The customer app (docs/customer-websocket.md): a WebSocket Phonebooth opens for each call.
    websocket_url: str | None = Field(None, pattern=r"^wss?://[^\s]+$", max_length=2000)
    # Sent on the upgrade request: a literal value or a stored credential / environment variable.
    websocket_headers: dict[str, str | SecretRef] = Field(default_factory=dict)
    # managed: Phonebooth's LLM, the app runs websocket tools; text: the app is the LLM;
    # audio: the app gets the call's raw audio and speaks for itself.
    mode: AgentMode = "managed"
    websocket_settings: AppSocketSettings = AppSocketSettings()
    # MCP tool servers whose tools join `tools` at call start (not in audio mode).
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list,
                                               max_length=MAX_MCP_SERVERS)

    @field_validator("websocket_headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
        return _check_header_names(headers)

    @field_validator("mcp_servers")
    @classmethod
    def _unique_servers(cls, servers: list[MCPServerConfig]) -> list[MCPServerConfig]:
        seen: set[str] = set()
        for s in servers:
            if s.url in seen:
                raise ValueError(f"duplicate MCP server url '{s.url}'")
            seen.add(s.url)
        return servers

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, tools: list[ToolConfig]) -> list[ToolConfig]:
        seen: set[str] = set()
        for t in tools:
            if t.name in seen:
                raise ValueError(f"duplicate tool name '{t.name}'")
            seen.add(t.name)
        return tools


def provider_blocks(
    kind: str, block: ProviderBlock, loc: tuple[str | int, ...] = (), depth: int = 0
) -> Iterator[tuple[tuple[str | int, ...], ProviderBlock, int]]:
    """(location, block, depth) of `block` and every fallback under it, in the order the
    fallback wrapper tries them; locations are paths such as `("llm", "fallback", 0)`."""
    loc = loc or (kind,)
    yield loc, block, depth
    for i, sub in enumerate(block.fallback):
        yield from provider_blocks(kind, sub, (*loc, "fallback", i), depth + 1)


def all_provider_blocks(
    config: AgentConfig,
) -> Iterator[tuple[str, tuple[str | int, ...], ProviderBlock, int]]:
    for kind in PROVIDER_KINDS:
        for loc, block, depth in provider_blocks(kind, getattr(config, kind)):
            yield kind, loc, block, depth


def too_deep(block: ProviderBlock, depth: int) -> bool:
    return depth >= MAX_FALLBACK_DEPTH and bool(block.fallback)


TOO_DEEP = (f"fallback providers nest at most {MAX_FALLBACK_DEPTH} deep; list further "
            "providers in an outer 'fallback' array")


STT_RECOVERY_TOP_LEVEL = ("applies to the whole STT chain: set it in the top-level 'stt' "
                          "block, not in a fallback")


def recovery_misplaced(kind: str, block: ProviderChoice, depth: int) -> list[str]:
    """STT recovery settings given as options of a fallback block (they are chain-wide)."""
    if kind != "stt" or depth == 0:
        return []
    return [k for k in STT_RECOVERY_FIELDS if k in block.options()]


def _error(kind: str, message: str, loc: tuple[str | int, ...], value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def provider_errors(config: AgentConfig) -> list[InitErrorDetails]:
    """Check each provider block (and its fallbacks) against the adapter's config model.

    Locations are full paths such as `llm.fallback.0.temperature`.
    """
    errors: list[InitErrorDetails] = []
    for kind, loc, b, depth in all_provider_blocks(config):
        if too_deep(b, depth):
            errors.append(_error("fallback_depth", TOO_DEEP, (*loc, "fallback"), None))
        misplaced = recovery_misplaced(kind, b, depth)
        errors += [_error("stt_recovery_option", STT_RECOVERY_TOP_LEVEL, (*loc, k),
                          b.options()[k]) for k in misplaced]
        errors += _block_errors(kind, b, loc, skip=misplaced)
    return errors + s2s_errors(config)


def _block_errors(kind: str, block: ProviderChoice, loc: tuple[str | int, ...],
                  skip: list[str] | None = None) -> list[InitErrorDetails]:
    """The block's options (less `skip`, reported already) against its adapter's config
    model, with JSON's types."""
    options = {k: v for k, v in block.options().items() if k not in (skip or [])}
    try:
        registry.get(kind, block.provider).Config.model_validate_json(
            json.dumps(options), strict=True)
    except registry.UnknownProvider as exc:
        return [_error("unknown_provider", str(exc), (*loc, "provider"), block.provider)]
    except ValidationError as exc:
        return [_error("provider_option", e["msg"], (*loc, *e["loc"]), e.get("input"))
                for e in exc.errors()]
    return []


def s2s_errors(config: AgentConfig) -> list[InitErrorDetails]:
    """The s2s block's options and its cascade rule."""
    if config.s2s is None:
        return []
    return _block_errors("s2s", config.s2s, ("s2s",)) + s2s_cascade_errors(config)


HYBRID_NEEDS_TTS = ("output 'text' is spoken by the agent's own voice: give a 'tts' block "
                    "(or output 'audio')")


def s2s_cascade_errors(config: AgentConfig) -> list[InitErrorDetails]:
    """Next to s2s, a cascaded chain is all or nothing: stt, llm and tts are its call-start
    fallback, and a partial chain would silently borrow the embedded defaults for the missing
    kinds. With `output: text` the `tts` block is required (it speaks the model's text), and
    may stand alone: it is the agent's voice, not a partial fallback."""
    if config.s2s is None:
        return []
    given = [k for k in PROVIDER_KINDS if k in config.model_fields_set]
    if config.s2s.speaks_text():
        if "tts" not in given:
            return [_error("s2s_output", HYBRID_NEEDS_TTS, ("s2s", "output"), "text")]
        if given == ["tts"]:
            return []
    if not given or len(given) == len(PROVIDER_KINDS):
        return []
    return [_error("s2s_fallback",
                   "with 's2s' set, give all of stt, llm and tts (its fallback) or none",
                   (kind,), None)
            for kind in PROVIDER_KINDS if kind not in given]


def app_socket_errors(config: AgentConfig) -> list[InitErrorDetails]:
    """What the customer-app fields need of the rest of the config."""
    errors: list[InitErrorDetails] = []
    if config.websocket_url is None:
        if config.mode != "managed":
            errors.append(_error("websocket_url", f"mode '{config.mode}' needs a websocket_url "
                                 "(the app that does that part)", ("mode",), config.mode))
        errors += [_error("websocket_url", "a websocket tool needs the agent's websocket_url",
                          ("tools", i, "websocket"), True)
                   for i, t in enumerate(config.tools) if t.websocket]
    if config.mode == "audio" and config.mcp_servers:
        errors.append(_error("mode_mcp", "mode 'audio' has no LLM to give MCP tools to (the "
                             "app speaks for itself)", ("mcp_servers",), None))
    if config.mode != "managed" and config.s2s is not None:
        errors.append(_error("mode_s2s", f"mode '{config.mode}' replaces the engine's LLM or "
                             "audio; an s2s model cannot take the call as well", ("mode",),
                             config.mode))
    return errors


def parse_agent_config(data: Any) -> AgentConfig:
    """Validate a whole agent config, provider options included, with JSON's types: "5" is not
    a number nor 1 a boolean (the published JSON Schema says the same).

    Raises pydantic.ValidationError whose error locations name each failing field. (Provider
    checks run here rather than in a model validator so their locations survive.)
    """
    config = validate_json_strict(data)
    errors = provider_errors(config) + app_socket_errors(config)
    if errors:
        raise ValidationError.from_exception_data("AgentConfig", errors)
    return config


def validate_json_strict(data: Any) -> AgentConfig:
    """AgentConfig from JSON-shaped data in strict mode (raises pydantic.ValidationError)."""
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError.from_exception_data("AgentConfig", [
            _error("json_type", f"not plain JSON: {exc}", (), None)]) from None
    return AgentConfig.model_validate_json(text, strict=True)
