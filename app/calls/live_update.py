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
    ProviderBlock,
    ToolConfig,
    _block_errors,
    provider_blocks,
    too_deep,
)


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
