"""Engine waits that leave room for provider failover.

The engine gives up on a provider after its own timeouts: `turn.stt_final_timeout_ms` for the
caller's final transcript, `response_timeout_s` (the watchdog) for the first agent audio of an
answer. A fallback chain needs time of its own first: up to `timeout_s` on each provider that
fails before the next one answers. If the engine's clock ran out earlier, a working fallback would
answer into a turn already given up on — the turn committed as a fragment (or dropped as noise),
or an apology spoken over the fallback's answer. So for the engine, each wait is extended by the
longest time its chain may spend on failing providers; the STT wait also by the time the STT
recovery may spend reopening a broken stream (`stt.reconnect_budget_s`) before its fallback (or
the error) comes.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.agent_config import AgentConfig, ProviderBlock


def _links(block: ProviderBlock) -> Iterator[ProviderBlock]:
    """The chain in the order the fallback wrapper tries it (a fallback may have its own)."""
    yield block
    for sub in block.fallback:
        yield from _links(sub)


def switch_budget_s(block: ProviderBlock) -> float:
    """Longest time spent on failing providers before the last one of the chain is asked: every
    link but the last gets its `timeout_s` (a lone provider gets none, see providers.factory)."""
    chain = list(_links(block))
    return sum(b.timeout_s for b in chain[:-1])


def with_failover_budget(cfg: AgentConfig) -> AgentConfig:
    """`cfg` with the engine's provider waits extended by its chains' switch budgets."""
    stt_s = switch_budget_s(cfg.stt)
    if cfg.stt.reconnect_attempts:
        stt_s += cfg.stt.reconnect_budget_s
    reply_s = switch_budget_s(cfg.llm) + switch_budget_s(cfg.tts)
    if not stt_s and not reply_s:
        return cfg
    turn = cfg.turn.model_copy(update={
        "stt_final_timeout_ms": cfg.turn.stt_final_timeout_ms + round(stt_s * 1000)})
    return cfg.model_copy(update={"turn": turn,
                                  "response_timeout_s": cfg.response_timeout_s + reply_s})
