"""The carrier's codec end to end on a μ-law call: the caller's bytes reach Deepgram as the
carrier sent them, and ElevenLabs' μ-law reaches the carrier as the vendor sent it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from app.simulator.far_end import SimCall
from app.telephony.plivo.playout import PlivoPlayout
from tests.e2e.cloud_fixtures import GREETING, cloud_rig

pytestmark = pytest.mark.slow


def spy_media(monkeypatch: pytest.MonkeyPatch) -> tuple[bytearray, bytearray]:
    """(μ-law bytes the simulated carrier sent as caller audio, bytes it was sent to play)."""
    sent, played = bytearray(), bytearray()
    send_raw, on_play = SimCall.send_raw, SimCall._on_play

    async def spy_send(self: SimCall, data: str | bytes) -> None:
        msg = json.loads(data) if isinstance(data, str) and data.startswith("{") else {}
        if msg.get("event") == "media":
            sent.extend(base64.b64decode(msg["media"]["payload"]))
        await send_raw(self, data)

    async def spy_play(self: SimCall, msg: dict[str, Any], now: float) -> None:
        played.extend(base64.b64decode((msg.get("media") or {}).get("payload", "")))
        await on_play(self, msg, now)

    monkeypatch.setattr(SimCall, "send_raw", spy_send)
    monkeypatch.setattr(SimCall, "_on_play", spy_play)
    return sent, played


async def test_mulaw_call_reaches_deepgram_and_the_caller_untouched(
        settings_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sent, played = spy_media(monkeypatch)
    pcm_writes: list[int] = []
    write = PlivoPlayout.write

    async def counting_write(self: PlivoPlayout, samples: Any, sample_rate: int) -> None:
        pcm_writes.append(len(samples))
        await write(self, samples, sample_rate)

    monkeypatch.setattr(PlivoPlayout, "write", counting_write)
    # Deepgram alone (no fallback that would need PCM): it asks for the call's own μ-law.
    async with cloud_rig(settings_factory, monkeypatch, agent_overrides={"stt": None}) as rig:
        async with rig.call() as call:
            await rig.wait_greeting(call)
            await rig.ask(call)
            await rig.wait_answered(call)
        await rig.end(call)
        listens = rig.dg.for_endpoint("listen")
        expected_greeting = rig.el.expected_audio(GREETING, "ulaw_8000").tobytes()

    assert len(listens) == 1
    (rec,) = listens
    assert (rec.q("encoding"), rec.q("sample_rate")) == ("mulaw", "8000")
    # Every byte Deepgram got is the carrier's, in order, from the stream's first frame on.
    assert len(rec.audio) > 8000 * 2  # the greeting's wait and the question, at least
    assert bytes(rec.audio) == bytes(sent[: len(rec.audio)])
    # The agent's μ-law went out as ElevenLabs sent it: no PCM write at all on this call.
    assert bytes(played[: len(expected_greeting)]) == expected_greeting
    assert pcm_writes == []
