"""A full simulated Plivo call on cloud providers (fake Deepgram + OpenAI + ElevenLabs), then the
same call with each primary failing mid-call and its fallback taking over.

What the caller hears is judged from the simulator's recording (see tests/e2e/cloud_fixtures.py):
the wait between the end of the caller's question and the first agent audio after it, and any
silence hole inside the agent's answer, must stay under the failing block's `timeout_s` plus one
second (issue 6). The switch must be a `provider.fallback` event, visible on the session.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from tests.e2e.cloud_fixtures import (
    ANSWER,
    CARTESIA_HZ,
    EL_HZ,
    FALLBACK_ANSWER,
    GREETING,
    QUESTION,
    Question,
    Rig,
    arm_failure,
    cloud_rig,
    heard,
)

pytestmark = pytest.mark.slow


def usage_totals(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = defaultdict(float)
    for r in rows:
        out[(r["provider"], r["metric"])] += float(r["quantity"])
    return dict(out)


def answer_gap(rig: Rig, call: Any, q: Question) -> tuple[float, float, float]:
    """(gap before the first agent audio after the question, longest hole inside the agent's
    audio after it, seconds of agent audio after it)."""
    rec = heard(call)
    span = rec.speech_after(q.speech_end)
    assert span is not None, "the caller heard nothing after the question"
    start, end = span
    return start - q.speech_end, rec.longest_hole(start, end), end - start


async def test_cloud_call_end_to_end(settings_factory, monkeypatch) -> None:
    async with cloud_rig(settings_factory, monkeypatch) as rig:
        async with rig.call() as call:
            await rig.wait_greeting(call)
            q = await rig.ask(call)
            await rig.wait_answered(call)
            gap, hole, spoken = answer_gap(rig, call, q)
        session = await rig.end(call)

        print(call.result.format_timeline())
        print(f"gap {gap:.2f}s hole {hole:.2f}s spoken {spoken:.2f}s")
        rec = heard(call)
        assert gap < rig.timeout_s + 1.0
        assert hole < 0.2
        # The answer came from the primary TTS, in full.
        assert abs(rec.dominant_hz(q.speech_end + gap, q.speech_end + gap + 1.0) - EL_HZ) < 20
        assert not [e for e in rig.of(call) if e["type"] in ("provider.fallback", "session.error")]

        # Session, turns and usage rows.
        assert session["status"] == "ended"
        turns = [(t["role"], t["text"]) for t in session["turns"]]
        assert ("user", QUESTION) in turns
        assert ("assistant", ANSWER) in turns
        db_usage = usage_totals(session["usage"])
        reported = usage_totals([e for e in rig.of(call, "session.usage")])
        assert db_usage == pytest.approx(reported)
        assert set(db_usage) >= {("deepgram", "audio_seconds"), ("openai", "input_tokens"),
                                 ("openai", "output_tokens"), ("elevenlabs", "characters")}
        # What each vendor saw matches what its adapter reported.
        sent_s = sum(r.audio_bytes for r in rig.dg.for_endpoint("listen")) / 32000
        assert db_usage[("deepgram", "audio_seconds")] == pytest.approx(sent_s, abs=0.05)
        chars = sum(len(m["text"].strip()) for r in rig.el.for_endpoint("stream-input")
                    for m in r.messages if isinstance(m, dict) and m.get("text", "").strip())
        assert db_usage[("elevenlabs", "characters")] == chars
        assert chars >= len(GREETING) + len(ANSWER) - 2
        assert CARTESIA_HZ  # (fallback voice unused here)


# ---------------------------------------------------------------------------------------------
# Failover: each primary fails mid-call, its fallback takes over
# ---------------------------------------------------------------------------------------------

FAILOVER = [
    # (kind, mode): how the primary fails once the greeting has played
    ("stt", "status"), ("stt", "hang"), ("stt", "drop"),
    ("llm", "status"), ("llm", "hang"), ("llm", "drop"),
    ("tts", "status"), ("tts", "hang"), ("tts", "drop"),
]


@pytest.mark.parametrize(("kind", "mode"), FAILOVER, ids=[f"{k}-{m}" for k, m in FAILOVER])
async def test_primary_fails_mid_call(settings_factory, monkeypatch, kind: str,
                                      mode: str) -> None:
    async with cloud_rig(settings_factory, monkeypatch) as rig:
        cut = arm_failure(rig, kind, mode)
        async with rig.call() as call:
            await rig.wait_greeting(call)
            cut.before_question()
            q = await rig.ask(call)
            await cut.during_question()
            await rig.wait_answered(call)
            gap, hole, spoken = answer_gap(rig, call, q)
            fallbacks = rig.of(call, "provider.fallback")
            turn = rig.of(call, "turn.completed")[0]
        session = await rig.end(call)

        print(call.result.format_timeline())
        t0 = rig.of(call)[0]["ts"]
        for e in rig.of(call):
            if e["type"] not in ("agent.state_changed", "session.usage"):
                print(f"{e['ts'] - t0:7.3f} {e['type']} "
                      f"{ {k: v for k, v in e.items() if k not in ('type', 'ts', 'report')} }"[:200])
        print(f"{kind}-{mode}: gap {gap:.2f}s hole {hole:.2f}s spoken {spoken:.2f}s "
              f"fallbacks {fallbacks}")
        expected_switch = {"stt": ("deepgram", "openai"), "llm": ("openai", "anthropic"),
                           "tts": ("elevenlabs", "cartesia")}[kind]
        assert [(f["kind"], f["from_provider"], f["to_provider"]) for f in fallbacks] == \
            [(kind, *expected_switch)]
        # The call kept talking: the answer (the fallback LLM's, if the LLM failed) was heard.
        assert turn["user_text"] == QUESTION
        assert turn["agent_text"] == (FALLBACK_ANSWER if kind == "llm" else ANSWER)
        assert gap <= rig.timeout_s + 1.0, f"{gap:.2f}s of silence after the question"
        assert hole <= rig.timeout_s + 1.0, f"{hole:.2f}s hole inside the answer"
        rec = heard(call)
        start = q.speech_end + gap
        voice = CARTESIA_HZ if kind == "tts" else EL_HZ
        assert rec.seconds_of(voice, start, start + spoken) > 1.0
        # The switch is on the session's record.
        assert session["status"] == "ended"
        switches = session["report"]["provider_fallbacks"]
        assert [(s["kind"], s["from_provider"], s["to_provider"]) for s in switches] == \
            [(kind, *expected_switch)]
        assert ("assistant", turn["agent_text"]) in [(t["role"], t["text"])
                                                      for t in session["turns"]]
