"""Build a provider (or a fallback chain) from an agent's provider block.

A block is `{provider: NAME, timeout_s: 5, fallback: [block, ...], ...options}`. It may be a plain
dict or any object with `.provider`, `.options()`, `.timeout_s` and `.fallback` (the service's
`ProviderBlock`); this module does not import `app`. Options are validated by the adapter's own
`Config` model (they were already checked when the agent was saved, so errors here mean the
registry changed underneath, e.g. a plugin was uninstalled).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from providers import registry
from providers.base import Kind, Provider, ProviderContext
from providers.fallback import (
    DEFAULT_COOLDOWN_S,
    Cooldowns,
    FallbackLLM,
    FallbackTTS,
    OnSwitch,
)
from providers.stt_recovery import RecoveringSTT, STTRecovery

DEFAULT_TIMEOUT_S = 5.0
_WRAPPERS = {"llm": FallbackLLM, "tts": FallbackTTS}
# The STT block's own settings (the whole chain's recovery), not options of its adapter.
RECOVERY_FIELDS = ("reconnect_attempts", "reconnect_budget_s", "replay_max_s")


def stt_recovery(block: Any) -> STTRecovery:
    """The recovery policy an agent's top-level `stt` block asks for (defaults for the rest)."""
    if isinstance(block, dict):
        given = {k: block[k] for k in RECOVERY_FIELDS if k in block}
    else:
        given = {k: getattr(block, k) for k in RECOVERY_FIELDS if hasattr(block, k)}
    return STTRecovery(**given)


def _fields(block: Any) -> tuple[str, dict[str, Any], float, list[Any]]:
    """(provider name, options, timeout_s, fallback blocks) of a dict or block-like object."""
    if isinstance(block, dict):
        data = {k: v for k, v in block.items() if k not in RECOVERY_FIELDS}
        name = data.pop("provider", None)
        timeout_s = data.pop("timeout_s", DEFAULT_TIMEOUT_S)
        fallback = data.pop("fallback", None) or []
        options = data
    else:
        name = getattr(block, "provider", None)
        options = dict(block.options()) if hasattr(block, "options") else {}
        timeout_s = getattr(block, "timeout_s", DEFAULT_TIMEOUT_S)
        fallback = list(getattr(block, "fallback", None) or [])
    if not isinstance(name, str) or not name:
        raise ValueError("a provider block needs a 'provider' name")
    return name, options, float(timeout_s), fallback


def _flatten(block: Any) -> Iterator[tuple[str, dict[str, Any], float]]:
    """The block, then its fallbacks depth-first (a fallback may carry its own fallbacks)."""
    name, options, timeout_s, fallback = _fields(block)
    yield name, options, timeout_s
    for sub in fallback:
        yield from _flatten(sub)


def instantiate(kind: Kind, name: str, options: dict[str, Any], ctx: ProviderContext) -> Provider:
    cls = registry.get(kind, name)
    if cls.kind != kind:
        raise ValueError(f"provider '{name}' is a {cls.kind} provider, not {kind}")
    config = cls.Config.model_validate(options)
    return cls(config, ctx)


def build_chain(kind: Kind, block: Any, ctx: ProviderContext) -> list[tuple[Provider, float]]:
    """Instantiate every provider of the block's chain, in order, with its timeout."""
    return [(instantiate(kind, name, options, ctx), timeout_s)
            for name, options, timeout_s in _flatten(block)]


def build_provider(kind: Kind, block: Any, ctx: ProviderContext, *,
                   on_switch: OnSwitch | None = None, cooldown_s: float = DEFAULT_COOLDOWN_S,
                   cooldowns: Cooldowns | None = None) -> Any:
    """The provider for an agent's `kind` block. STT is always wrapped in `RecoveringSTT` (a
    broken stream is reopened or failed over with the utterance replayed, lone provider or not).
    LLM and TTS: the adapter itself when the block has no fallbacks (a lone provider gets no
    timeout: slowness would only become failure), otherwise a Fallback wrapper over the chain."""
    chain = build_chain(kind, block, ctx)
    if kind == "stt":
        return RecoveringSTT(chain, recovery=stt_recovery(block), on_switch=on_switch,
                             cooldown_s=cooldown_s, cooldowns=cooldowns)
    if len(chain) == 1:
        return chain[0][0]
    wrapper = _WRAPPERS[kind]
    return wrapper(chain, on_switch=on_switch, cooldown_s=cooldown_s, cooldowns=cooldowns)
