"""Checking a running call's reconfiguration (`_Call.update`) before any of it is applied.

The new tools and LLM block arrive as JSON from outside (the customer WebSocket's
`agent_session.update`, the control API): they are validated with the same models and the same
adapter option check as an agent config, and a bad one is refused whole, with a `ValueError`
naming the field (e.g. `tools.1.name: ...`, `llm.temperature: ...`), so a call never runs half
updated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from app.db.engine import Database
from app.db.repos import agents as agents_repo
from app.merge_patch import apply_merge_patch


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
