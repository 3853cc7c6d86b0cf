"""The STT recovery layer: a broken stream is reopened on its own provider within the policy's
attempts and budget, then failed over; every new stream gets the current utterance again from
the layer's one replay buffer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from providers.base import ProviderError, Transcript, TranscriptQueue, queued_transcripts
from providers.fallback import Cooldowns
from providers.stt_recovery import RecoveringSTT, ReplayBuffer, STTRecovery

FRAME = np.ones(320, dtype=np.int16)


class Stream:
    """Transcribes an utterance as 'samples=N'; `breaks_at` fails the push of that frame."""

    def __init__(self, breaks_at: int | None) -> None:
        self.breaks_at = breaks_at
        self.pushed = 0
        self.samples = 0
        self.out: TranscriptQueue = asyncio.Queue()
        self.closed = False

    async def push(self, frame: np.ndarray) -> None:
        self.pushed += 1
        if self.pushed == self.breaks_at:
            raise ProviderError("vendor", "WebSocket closed (1006)", code="1006")
        self.samples += len(frame)

    async def flush(self) -> None:
        self.out.put_nowait(Transcript(f"samples={self.samples}", True, 1.0, 0,
                                       self.samples // 16))
        self.samples = 0

    def events(self) -> AsyncIterator[Transcript]:
        return queued_transcripts(self.out)

    async def aclose(self) -> None:
        self.closed = True
        self.out.put_nowait(None)


class Vendor:
    """Streams that break at the given frame, one entry per opening (None: never breaks)."""

    def __init__(self, name: str, breaks: list[int | None]) -> None:
        self.name = name
        self.breaks = breaks
        self.streams: list[Stream] = []

    async def open(self, sample_rate: int, language: str) -> Stream:
        n = len(self.streams)
        s = Stream(self.breaks[n] if n < len(self.breaks) else None)
        self.streams.append(s)
        return s


FAST = STTRecovery(reconnect_attempts=3, reconnect_budget_s=2.0)


def chain(*vendors: Vendor, recovery: STTRecovery = FAST,
          switches: list[tuple[str, str]] | None = None) -> RecoveringSTT:
    def on_switch(kind: str, frm: str, to: str, error: BaseException) -> None:
        if switches is not None:
            switches.append((frm, to))

    return RecoveringSTT([(v, 5.0) for v in vendors], recovery=recovery, on_switch=on_switch,
                         cooldowns=Cooldowns())


async def final(events: AsyncIterator[Transcript]) -> Transcript:
    async with asyncio.timeout(5):
        async for t in events:
            if t.is_final:
                return t
    raise AssertionError("no final")


async def test_a_broken_stream_is_reopened_on_its_provider_with_the_utterance() -> None:
    primary, spare = Vendor("primary", [5]), Vendor("spare", [])
    switches: list[tuple[str, str]] = []
    s = await chain(primary, spare, switches=switches).open(16000, "en")
    events = s.events()
    for _ in range(10):
        await s.push(FRAME)
    await s.flush()
    t = await final(events)
    assert t.text == f"samples={10 * 320}"  # every frame of the utterance, once
    assert len(primary.streams) == 2 and primary.streams[0].closed
    assert not spare.streams and not switches  # a reopening is not a failover
    await s.aclose()


async def test_a_provider_that_keeps_breaking_fails_over_once_its_attempts_are_spent() -> None:
    primary, spare = Vendor("primary", [3, 1, 1, 1, 1]), Vendor("spare", [])
    switches: list[tuple[str, str]] = []
    s = await chain(primary, spare, switches=switches).open(16000, "en")
    events = s.events()
    for _ in range(8):
        await s.push(FRAME)
    await s.flush()
    assert (await final(events)).text == f"samples={8 * 320}"
    assert len(primary.streams) == 1 + FAST.reconnect_attempts
    assert switches == [("primary", "spare")]
    await s.aclose()


async def test_the_budget_bounds_the_reopenings() -> None:
    primary, spare = Vendor("primary", [2, *[1] * 50]), Vendor("spare", [])
    policy = STTRecovery(reconnect_attempts=10, reconnect_budget_s=0.4)
    s = await chain(primary, spare, recovery=policy).open(16000, "en")
    events = s.events()
    t0 = time.monotonic()
    for _ in range(4):
        await s.push(FRAME)
    await s.flush()
    assert (await final(events)).text == f"samples={4 * 320}"
    assert time.monotonic() - t0 < 0.4 + 0.5
    assert len(primary.streams) < 11
    await s.aclose()


class HangingReopen(Vendor):
    """Its first stream breaks at frame 2; every reopening hangs in the handshake."""

    async def open(self, sample_rate: int, language: str) -> Stream:
        if self.streams:
            await asyncio.Event().wait()
        return await super().open(sample_rate, language)


async def test_a_caller_waiting_for_a_final_ends_the_reopening_at_the_providers_timeout() -> None:
    """The budget allows a minute of reopening, but once the caller waits for their words the
    primary gets only its `timeout_s` from the flush: then the spare transcribes the replay."""
    primary, spare = HangingReopen("primary", [2]), Vendor("spare", [])
    switches: list[tuple[str, str]] = []
    policy = STTRecovery(reconnect_attempts=10, reconnect_budget_s=60.0)
    stt = RecoveringSTT([(primary, 0.2), (spare, 0.2)], recovery=policy, cooldowns=Cooldowns(),
                        on_switch=lambda kind, frm, to, error: switches.append((frm, to)))
    s = await stt.open(16000, "en")
    events = s.events()
    for _ in range(4):
        await s.push(FRAME)  # the second push breaks the stream: a reopening starts
    await s.flush()
    assert (await final(events)).text == f"samples={4 * 320}"  # well before the minute
    assert switches == [("primary", "spare")]
    await s.aclose()


async def test_without_a_fallback_the_reopening_keeps_its_whole_budget() -> None:
    lone = HangingReopen("lone", [2])
    policy = STTRecovery(reconnect_attempts=10, reconnect_budget_s=60.0)
    s = await RecoveringSTT([(lone, 0.2)], recovery=policy, cooldowns=Cooldowns()).open(
        16000, "en")
    for _ in range(4):
        await s.push(FRAME)
    await s.flush()
    await asyncio.sleep(0.5)  # past the provider's timeout: still reopening, no error
    await s.push(FRAME)
    assert len(lone.streams) == 1
    await s.aclose()


async def test_a_lone_provider_surfaces_the_error_when_reopening_fails() -> None:
    lone = Vendor("lone", [2, 1, 1])
    s = await chain(lone, recovery=STTRecovery(reconnect_attempts=2)).open(16000, "en")
    events = s.events()
    with pytest.raises(ProviderError, match="1006"):
        for _ in range(5):
            await s.push(FRAME)
            await asyncio.sleep(0.2)
        await final(events)
    assert len(lone.streams) == 3
    await s.aclose()


def test_the_replay_buffer_is_bounded_and_forgets_what_a_final_covered() -> None:
    buf = ReplayBuffer(max_samples=1000)
    for _ in range(5):
        buf.add(np.ones(320, np.int16))
    assert buf.samples <= 1000 and buf.start == 2 * 320  # the oldest audio went first
    buf.flushed()
    buf.add(np.ones(320, np.int16))
    buf.finalised()
    assert (buf.start, buf.samples) == (5 * 320, 320)
    buf.covered_until(6 * 320)
    assert (buf.start, buf.samples) == (6 * 320, 0)


def test_policy_from_the_agent_block() -> None:
    from providers.factory import stt_recovery

    got = stt_recovery({"provider": "x", "reconnect_attempts": 1, "replay_max_s": 5.0})
    assert got == STTRecovery(reconnect_attempts=1, replay_max_s=5.0)


async def test_every_provider_is_wrapped(ctx: Any) -> None:
    from providers.factory import build_provider

    stt = build_provider("stt", {"provider": "whisper", "reconnect_budget_s": 1.5}, ctx)
    assert isinstance(stt, RecoveringSTT) and stt.recovery.reconnect_budget_s == 1.5
