"""The engine's provider waits leave room for each fallback chain's switches."""

from __future__ import annotations

from app.agent_config import AgentConfig
from app.calls.failover_budget import switch_budget_s, with_failover_budget


def agent(**blocks: object) -> AgentConfig:
    return AgentConfig.model_validate({"name": "a", "prompt": "p", **blocks})


def test_a_lone_provider_changes_nothing_but_the_stt_reconnect_budget() -> None:
    cfg = agent()
    out = with_failover_budget(cfg)
    # A broken STT stream is reopened (stt.reconnect_budget_s, 3 s) even without a fallback.
    assert out.turn.stt_final_timeout_ms == cfg.turn.stt_final_timeout_ms + 3000
    assert out.response_timeout_s == cfg.response_timeout_s
    no_reopening = agent(stt={"provider": "whisper", "reconnect_attempts": 0})
    assert with_failover_budget(no_reopening) is no_reopening


def test_each_link_but_the_last_adds_its_timeout() -> None:
    cfg = agent(
        stt={"provider": "deepgram", "timeout_s": 2, "reconnect_budget_s": 1.5,
             "fallback": [{"provider": "openai", "timeout_s": 3,
                           "fallback": [{"provider": "whisper", "timeout_s": 9}]}]},
        llm={"provider": "openai", "timeout_s": 4, "fallback": [{"provider": "anthropic"}]},
        tts={"provider": "elevenlabs", "timeout_s": 1.5, "fallback": [{"provider": "piper"}]},
    )
    assert switch_budget_s(cfg.stt) == 5.0  # deepgram 2 + openai 3 (a nested fallback)
    out = with_failover_budget(cfg)
    # The switches, plus the time spent reopening the broken stream before the first one.
    assert out.turn.stt_final_timeout_ms == cfg.turn.stt_final_timeout_ms + 5000 + 1500
    assert out.response_timeout_s == cfg.response_timeout_s + 4 + 1.5
    assert out.turn.max_wait_ms == cfg.turn.max_wait_ms  # nothing else moves
    assert cfg.turn.stt_final_timeout_ms == 1500  # the stored config is untouched
