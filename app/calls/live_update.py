"""A running call's reconfiguration: checked whole before any of it is applied (`LiveAgent`).

The new tools and LLM block arrive as JSON from outside (the customer WebSocket's
`agent_session.update`, the control API): they are validated with the same models and the same
adapter option check as an agent config, and a bad one is refused whole, with a `ValueError`
naming the field (e.g. `tools.1.name: ...`, `llm.temperature: ...`), so a call never runs half
updated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from app.agent_config import (
    TOO_DEEP,
    AgentConfig,
    ProviderBlock,
    ToolConfig,
    _block_errors,
    provider_blocks,
    too_deep,
)
from app.calls.call_providers import CallProviders
from app.db.engine import Database
from app.db.repos import agents as agents_repo
from app.merge_patch import apply_merge_patch
from app.tools.executor import ToolExecutor, ToolSession
from app.tools.mcp_tools import McpToolbox
from pipelines import events as ev
from pipelines.conversation import Conversation


def _loc(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _first_error(prefix: Sequence[str | int], exc: ValidationError) -> ValueError:
    e = exc.errors()[0]
    return ValueError(f"{_loc([*prefix, *e['loc']])}: {e['msg']}")


def parse_tools(raw: Any) -> list[ToolConfig]:
    """A list of tool definitions (ToolConfig-shaped dicts); `[]` is valid (no tools)."""
    if not isinstance(raw, list):
        raise ValueError("tools: must be a list of tool definitions")
    tools: list[ToolConfig] = []
    for i, item in enumerate(raw):
        try:
            tools.append(ToolConfig.model_validate(item))
        except ValidationError as exc:
            raise _first_error(("tools", i), exc) from None
    names = [t.name for t in tools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"tools: duplicate tool name(s) {', '.join(dupes)}")
    return tools


def parse_llm_block(raw: Any) -> ProviderBlock:
    """An LLM provider block (with its fallbacks), its options checked against the adapters."""
    return parse_provider_block("llm", raw)


def parse_provider_block(kind: str, raw: Any) -> ProviderBlock:
    """A `kind` (llm, tts) provider block with its fallbacks, its options checked against the
    adapters."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{kind}: must be a provider block ({{provider: NAME, ...options}})")
    try:
        block = ProviderBlock.model_validate(dict(raw))
    except ValidationError as exc:
        raise _first_error((kind,), exc) from None
    for loc, sub, depth in provider_blocks(kind, block):
        if too_deep(sub, depth):
            raise ValueError(f"{_loc([*loc, 'fallback'])}: {TOO_DEEP}")
        errors = _block_errors(kind, sub, loc)
        if errors:
            e = errors[0]
            err = e["type"]
            message = err.message() if isinstance(err, PydanticCustomError) else err
            raise ValueError(f"{_loc(e.get('loc', (kind,)))}: {message}")
    return block


# What a live `update(turn_taking=...)` may change.
TURN_TAKING_FIELDS = ("vad", "turn", "interruption", "idle", "semantic_vad")


def retune(config: AgentConfig, patch: dict[str, Any]) -> AgentConfig:
    """`config` with `patch` (a JSON merge patch) merged into its turn-taking settings,
    validated whole; ValueError naming the field (`turn_taking.vad.threshold: ...`)."""
    unknown = sorted(set(patch) - set(TURN_TAKING_FIELDS))
    if unknown:
        raise ValueError(f"turn_taking.{unknown[0]}: not a turn-taking setting (one of "
                         f"{', '.join(TURN_TAKING_FIELDS)})")
    current = config.model_dump(mode="json")
    merged = apply_merge_patch({k: current[k] for k in TURN_TAKING_FIELDS}, patch)
    try:
        new = AgentConfig.model_validate({**current, **merged})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError("turn_taking." + ".".join(str(p) for p in e["loc"])
                         + f": {e['msg']}") from None
    if new.vad.engine != config.vad.engine:
        raise ValueError("turn_taking.vad.engine: cannot change while the call runs")
    return new


async def stored_agent(db: Database, agent_id: str) -> tuple[AgentConfig, int]:
    """A stored agent's current config and version (a handoff's new persona); ValueError
    naming `agent_id` when there is no such agent."""
    async with db.session() as s:
        agent = await agents_repo.get(s, agent_id)
        version = await agents_repo.current_version(s, agent) if agent is not None else None
    if version is None:
        raise ValueError(f"agent_id: no agent '{agent_id}'")
    return AgentConfig.model_validate(dict(version.config)), int(version.version)


class LiveAgent:
    """The agent a live call runs now: its config, LLM, TTS and tool executor.

    A cascaded call's `update` (the customer app's `agent_session.update`, the control API) and
    `handoff` change them from the agent's next answer on. Everything is validated and every
    new provider built before anything changes, so a refused change leaves the call as it was.
    """

    def __init__(self, config: AgentConfig, providers: CallProviders,
                 tool_session: Callable[[AgentConfig], ToolSession],
                 emit: Callable[[ev.Event], None]) -> None:
        self.config = config
        self.providers = providers
        self._tool_session = tool_session
        self._emit = emit
        # The cascaded engine's, once built; the newest after an update (the post-call summary
        # and the failure clip use them).
        self.llm: Any = None
        self.tts: Any = None
        self.executor: ToolExecutor | None = None
        # The tools of the agent's MCP servers, listed at call start.
        self.mcp: McpToolbox | None = None

    def ensure_executor(self, cfg: AgentConfig) -> None:
        """A tool executor for `cfg`'s tools (and the MCP servers'), unless one runs already."""
        if (cfg.tools or self.mcp) and self.executor is None:
            self.executor = ToolExecutor(cfg.tools, self._tool_session(cfg), self._emit)

    @property
    def tool_specs(self) -> list[Any]:
        return self.executor.specs if self.executor is not None else []

    def update(self, conv: Conversation, *, system_prompt: str | None,
               tools: list[Any] | None, llm: dict[str, Any] | None, new_agent: str,
               tts: dict[str, Any] | None, voice: str | None,
               turn_taking: dict[str, Any] | None) -> list[str]:
        """The raw (JSON) fields of a live update checked, then applied; the fields changed."""
        retuned = retune(self.config, turn_taking) if turn_taking is not None else None
        changed = self.reconfigure(
            conv, prompt=system_prompt,
            tools=parse_tools(tools) if tools is not None else None,
            llm=parse_provider_block("llm", llm) if llm is not None else None,
            tts=parse_provider_block("tts", tts) if tts is not None else None,
            voice=voice, new_agent=new_agent)
        if retuned is not None:
            conv.retune(retuned)
            self.config = retuned
            changed.append("turn_taking")
        return changed

    def reconfigure(self, conv: Conversation, *, prompt: str | None,
                    tools: list[ToolConfig] | None, llm: ProviderBlock | None,
                    tts: ProviderBlock | None, voice: str | None, new_agent: str,
                    handoff_version: int = 0, always_handoff: bool = False) -> list[str]:
        # Built before anything changes: a provider that cannot be built leaves the call as
        # it was.
        new_llm = self.providers.build("llm", llm) if llm is not None else None
        new_tts = self.providers.build("tts", tts) if tts is not None else None
        specs: list[Any] | None = None
        created = False
        if tools is not None:
            if self.executor is None:
                self.ensure_executor(self.config.model_copy(update={"tools": tools}))
                created = self.executor is not None
            else:
                self.executor.replace_tools(tools)
            specs = self.tool_specs
        if new_llm is not None:
            # The old one stays in `providers` and is closed at the end of the call (an
            # answer may still be streaming from it).
            self.llm = new_llm
        if new_tts is not None:
            self.tts = new_tts
        changed = conv.update(prompt=prompt, tools=specs, llm=new_llm, tts=new_tts, voice=voice,
                              tool_executor=self.executor if created else None)
        if always_handoff or ("prompt" in changed and ("tools" in changed or "llm" in changed)):
            self._emit(ev.AgentHandoff(new_agent=new_agent, agent_version=handoff_version,
                                       fields=changed))
        return changed
