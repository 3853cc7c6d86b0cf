"""Fallback chains: switch on error or timeout, retry the same input, cool the failed provider
down, report every switch, raise the last error when all fail.

The providers here are small in-test adapters with scripted behaviour (fail at once, hang past
the timeout, drop mid-stream); the wrappers are the real code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from providers import registry
from providers.base import (
    AudioChunk,
    LLMProvider,
    ProviderConfig,
    ProviderError,
    STTProvider,
    STTStream,
    TextDelta,
    Transcript,
    TranscriptQueue,
    TTSProvider,
    Usage,
    queued_transcripts,
)
from providers.factory import build_provider
from providers.fallback import Cooldowns, FallbackLLM, FallbackTTS
from providers.stt_recovery import RecoveringSTT, STTRecovery


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cooldowns(clock: FakeClock) -> Cooldowns:
    return Cooldowns(clock)


@pytest.fixture
def switches() -> list[tuple[str, str, str, BaseException]]:
    return []


def on_switch_into(log: list[tuple[str, str, str, BaseException]]) -> Any:
    def on_switch(kind: str, frm: str, to: str, error: BaseException) -> None:
        log.append((kind, frm, to, error))
    return on_switch


# ---------------------------------------------------------------------------------------------
# LLM
# ---------------------------------------------------------------------------------------------


class ScriptedLLM:
    """mode: ok | fail | hang | drop (one token, then an error) | fatal (non-retryable)."""

    def __init__(self, name: str, mode: str = "ok", reply: str = "hello there") -> None:
        self.name = name
        self.mode = mode
        self.reply = reply
        self.calls: list[list[dict[str, Any]]] = []
        self.closed = 0

    async def stream(self, messages: list[dict[str, Any]], tools: Any = None,
                     settings: Any = None) -> AsyncIterator[Any]:
        self.calls.append(messages)
        try:
            if self.mode == "fail":
                raise ProviderError(self.name, "HTTP 503 overloaded", status=503)
            if self.mode == "fatal":
                raise ProviderError(self.name, "content rejected", status=400, retryable=False)
            if self.mode == "hang":
                await asyncio.sleep(3600)
            words = self.reply.split()
            for i, w in enumerate(words):
                yield TextDelta(w if i == 0 else " " + w)
                if self.mode == "drop":
                    raise ProviderError(self.name, "connection reset mid-stream")
            yield Usage(self.name, "m", "output_tokens", len(words))
        finally:
            self.closed += 1


async def collect_text(it: AsyncIterator[Any]) -> str:
    return "".join([e.text async for e in it if getattr(e, "kind", "") == "text"])


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


async def test_llm_error_switches_and_retries_same_messages(cooldowns, switches) -> None:
    bad, good = ScriptedLLM("bad", "fail"), ScriptedLLM("good", reply="from good")
    llm = FallbackLLM([(bad, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    assert await collect_text(llm.stream(MESSAGES)) == "from good"
    assert good.calls == [MESSAGES] and bad.calls == [MESSAGES]
    assert [(k, f, t) for k, f, t, _ in switches] == [("llm", "bad", "good")]
    assert isinstance(switches[0][3], ProviderError) and switches[0][3].status == 503


async def test_llm_cooldown_skips_failed_provider_until_it_expires(clock, cooldowns,
                                                                   switches) -> None:
    bad, good = ScriptedLLM("bad", "fail"), ScriptedLLM("good")
    llm = FallbackLLM([(bad, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns, cooldown_s=30.0)
    await collect_text(llm.stream(MESSAGES))
    # While cooling down, the failed provider is not tried first (no second error, no switch).
    clock.now += 10
    await collect_text(llm.stream(MESSAGES))
    assert len(bad.calls) == 1 and len(good.calls) == 2 and len(switches) == 1
    # Another wrapper sharing the table (another call) benefits as well.
    other = FallbackLLM([(bad, 5.0), (good, 5.0)], cooldowns=cooldowns)
    await collect_text(other.stream(MESSAGES))
    assert len(bad.calls) == 1
    # Cool-down over: the preferred provider gets its chance again.
    clock.now += 21
    bad.mode = "ok"
    assert await collect_text(llm.stream(MESSAGES)) == "hello there"
    assert len(bad.calls) == 2


async def test_llm_cooling_provider_is_still_a_last_resort(cooldowns, switches) -> None:
    a, b = ScriptedLLM("a", "fail"), ScriptedLLM("b")
    llm = FallbackLLM([(a, 5.0), (b, 5.0)], cooldowns=cooldowns,
                      on_switch=on_switch_into(switches))
    await collect_text(llm.stream(MESSAGES))  # a cools down
    a.mode, b.mode = "ok", "fail"
    # b now fails while a is cooling: a is tried after b rather than giving up.
    assert await collect_text(llm.stream(MESSAGES)) == "hello there"
    assert [(f, t) for _, f, t, _ in switches] == [("a", "b"), ("b", "a")]


async def test_llm_timeout_before_first_token_switches(cooldowns, switches) -> None:
    slow, good = ScriptedLLM("slow", "hang"), ScriptedLLM("good", reply="quick answer")
    llm = FallbackLLM([(slow, 0.2), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    assert await collect_text(llm.stream(MESSAGES)) == "quick answer"
    assert good.calls == [MESSAGES]
    assert slow.closed == 1  # the hung request was cancelled, not left running
    err = switches[0][3]
    assert isinstance(err, ProviderError) and err.code == "timeout"


async def test_llm_mid_stream_drop_surfaces_instead_of_restarting(cooldowns, switches) -> None:
    flaky, good = ScriptedLLM("flaky", "drop", reply="one two three"), ScriptedLLM("good")
    llm = FallbackLLM([(flaky, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    seen: list[str] = []
    with pytest.raises(ProviderError, match="mid-stream"):
        async for ev in llm.stream(MESSAGES):
            seen.append(ev.text)
    assert seen == ["one"]  # text already reached the caller: no second answer glued on
    assert good.calls == [] and switches == []
    assert cooldowns.is_cooling("llm", "flaky")  # but it did fail: later requests avoid it


async def test_llm_all_fail_raises_last_error(cooldowns, switches) -> None:
    a, b, c = ScriptedLLM("a", "fail"), ScriptedLLM("b", "hang"), ScriptedLLM("c", "fail")
    llm = FallbackLLM([(a, 5.0), (b, 0.1), (c, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    with pytest.raises(ProviderError) as info:
        await collect_text(llm.stream(MESSAGES))
    assert info.value.provider == "c"
    assert [(f, t) for _, f, t, _ in switches] == [("a", "b"), ("b", "c")]
    assert all(cooldowns.is_cooling("llm", n) for n in ("a", "b", "c"))


async def test_cool_down_is_per_endpoint_not_per_vendor_name(cooldowns, switches) -> None:
    """Two agents use `openai`, one against a failing endpoint: only that endpoint cools down;
    the other agent keeps preferring its own (healthy) one."""

    class OpenAICompatible(ScriptedLLM):
        def __init__(self, base_url: str, mode: str = "ok") -> None:
            super().__init__("openai", mode)
            self.config = SimpleNamespace(model_dump_json=lambda: f'{{"base_url":"{base_url}"}}')

    groq, backup_a = OpenAICompatible("https://groq.example/v1", "fail"), ScriptedLLM("backup")
    agent_a = FallbackLLM([(groq, 5.0), (backup_a, 5.0)], cooldowns=cooldowns)
    assert await collect_text(agent_a.stream(MESSAGES)) == "hello there"
    official, backup_b = OpenAICompatible("https://api.openai.example/v1"), ScriptedLLM("backup")
    agent_b = FallbackLLM([(official, 5.0), (backup_b, 5.0)], cooldowns=cooldowns)
    await collect_text(agent_b.stream(MESSAGES))
    assert len(official.calls) == 1 and backup_b.calls == []
    # The same endpoint in another agent's chain does share the cool-down.
    groq_again = OpenAICompatible("https://groq.example/v1")
    agent_c = FallbackLLM([(groq_again, 5.0), (ScriptedLLM("backup"), 5.0)],
                          cooldowns=cooldowns)
    await collect_text(agent_c.stream(MESSAGES))
    assert groq_again.calls == []


async def test_llm_non_retryable_error_is_not_retried(cooldowns, switches) -> None:
    bad, good = ScriptedLLM("bad", "fatal"), ScriptedLLM("good")
    llm = FallbackLLM([(bad, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    with pytest.raises(ProviderError, match="content rejected"):
        await collect_text(llm.stream(MESSAGES))
    assert good.calls == [] and switches == [] and not cooldowns.is_cooling("llm", "bad")


async def test_llm_last_provider_gets_unlimited_time(cooldowns) -> None:
    class SlowStart(ScriptedLLM):
        async def stream(self, messages, tools=None, settings=None):  # type: ignore[override]
            await asyncio.sleep(0.3)
            async for e in super().stream(messages, tools, settings):
                yield e

    a, b = ScriptedLLM("a", "fail"), SlowStart("b", reply="late but fine")
    llm = FallbackLLM([(a, 5.0), (b, 0.05)], cooldowns=cooldowns)
    assert await collect_text(llm.stream(MESSAGES)) == "late but fine"


async def test_llm_consumer_closing_early_closes_the_provider(cooldowns) -> None:
    good = ScriptedLLM("good", reply="a b c d e f")
    llm = FallbackLLM([(ScriptedLLM("x", "fail"), 5.0), (good, 5.0)], cooldowns=cooldowns)
    it = llm.stream(MESSAGES)
    assert (await anext(it)).text == "a"
    await it.aclose()
    assert good.closed == 1


# ---------------------------------------------------------------------------------------------
# TTS
# ---------------------------------------------------------------------------------------------


class ScriptedTTS:
    def __init__(self, name: str, mode: str = "ok", rate: int = 16000) -> None:
        self.name = name
        self.mode = mode
        self.sample_rate = rate
        self.calls: list[tuple[str, str | None]] = []

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        self.calls.append((text, voice))
        if self.mode == "fail":
            raise ProviderError(self.name, "HTTP 500")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        for _ in range(3):
            yield AudioChunk(np.full(160, 100, dtype=np.int16), self.sample_rate)
            if self.mode == "drop":
                raise ProviderError(self.name, "socket closed")


async def test_tts_error_retries_same_sentence_without_the_primary_voice(cooldowns,
                                                                          switches) -> None:
    bad, good = ScriptedTTS("bad", "fail"), ScriptedTTS("good", rate=24000)
    tts = FallbackTTS([(bad, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    chunks = [c async for c in tts.synthesize("We open at nine.", voice="aura-asteria")]
    assert len(chunks) == 3 and chunks[0].sample_rate == 24000
    assert bad.calls == [("We open at nine.", "aura-asteria")]
    assert good.calls == [("We open at nine.", None)]  # fallback uses its own voice
    assert [(k, f, t) for k, f, t, _ in switches] == [("tts", "bad", "good")]
    assert tts.sample_rate == 16000  # the preferred provider's native rate


async def test_tts_timeout_and_mid_sentence_drop_retry_the_sentence(cooldowns, switches) -> None:
    slow, flaky = ScriptedTTS("slow", "hang"), ScriptedTTS("flaky", "drop")
    good = ScriptedTTS("good")
    tts = FallbackTTS([(slow, 0.1), (flaky, 5.0), (good, 5.0)],
                      on_switch=on_switch_into(switches), cooldowns=cooldowns)
    chunks = [c async for c in tts.synthesize("Hello.")]
    # One chunk from the provider that dropped, then the whole sentence again from the next.
    assert len(chunks) == 1 + 3
    assert good.calls == [("Hello.", None)]
    assert [(f, t) for _, f, t, _ in switches] == [("slow", "flaky"), ("flaky", "good")]


async def test_tts_all_fail_raises_last_error(cooldowns) -> None:
    tts = FallbackTTS([(ScriptedTTS("a", "fail"), 5.0), (ScriptedTTS("b", "drop"), 5.0)],
                      cooldowns=cooldowns)
    with pytest.raises(ProviderError, match="socket closed"):
        async for _ in tts.synthesize("Hi."):
            pass


# ---------------------------------------------------------------------------------------------
# STT
# ---------------------------------------------------------------------------------------------


class ScriptedSTTStream(STTStream):
    """Transcribes an utterance as 'samples=N' (the audio it received since the last final).

    mode: ok | fail_push (raises on the 5th frame) | silent (never answers a flush) |
    events_fail (the transcript stream breaks at the first flush).
    """

    def __init__(self, owner: ScriptedSTT) -> None:
        self.owner = owner
        self.samples = 0
        self.pushed = 0
        self.out: TranscriptQueue = asyncio.Queue()
        self.closed = False

    async def push(self, frame: np.ndarray) -> None:
        self.pushed += 1
        if self.owner.mode == "fail_push" and self.pushed == 5:
            raise ProviderError(self.owner.name, "websocket closed (1011)")
        self.samples += len(frame)
        if self.pushed % 3 == 0:
            self.out.put_nowait(Transcript(f"partial={self.samples}", False))

    async def flush(self) -> None:
        if self.owner.mode == "silent":
            return
        if self.owner.mode == "events_fail":
            self.out.put_nowait(ProviderError(self.owner.name, "stream broke"))
            return
        self.out.put_nowait(Transcript(f"samples={self.samples}", True))
        self.samples = 0

    def events(self) -> AsyncIterator[Transcript]:
        return queued_transcripts(self.out)

    async def aclose(self) -> None:
        self.closed = True
        self.out.put_nowait(None)


class ScriptedSTT:
    def __init__(self, name: str, mode: str = "ok", open_fails: bool = False) -> None:
        self.name = name
        self.mode = mode
        self.open_fails = open_fails
        self.streams: list[ScriptedSTTStream] = []

    async def open(self, sample_rate: int, language: str) -> ScriptedSTTStream:
        if self.open_fails:
            raise ProviderError(self.name, "401 unauthorized")
        s = ScriptedSTTStream(self)
        self.streams.append(s)
        return s


FRAME = np.ones(320, dtype=np.int16)


def switching_stt(providers: list[tuple[Any, float]], **kw: Any) -> RecoveringSTT:
    """The chain with no reopening of a broken stream: these tests are about the switch."""
    return RecoveringSTT(providers, recovery=STTRecovery(reconnect_attempts=0), **kw)


async def next_final(it: AsyncIterator[Transcript]) -> Transcript:
    async def get() -> Transcript:
        async for t in it:
            if t.is_final:
                return t
        raise AssertionError("transcript stream ended without a final")
    return await asyncio.wait_for(get(), 5.0)


async def test_stt_push_failure_replays_the_utterance_on_the_next_provider(cooldowns,
                                                                           switches) -> None:
    bad, good = ScriptedSTT("bad", "fail_push"), ScriptedSTT("good")
    stt = switching_stt([(bad, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    for _ in range(10):
        await stream.push(FRAME)
    await stream.flush()
    final = await next_final(events)
    # Every frame of the turn reached the new provider: none lost in the switch.
    assert final.text == f"samples={10 * 320}"
    assert [(k, f, t) for k, f, t, _ in switches] == [("stt", "bad", "good")]
    assert bad.streams[0].closed
    # The next utterance goes straight to the new provider.
    for _ in range(4):
        await stream.push(FRAME)
    await stream.flush()
    assert (await next_final(events)).text == f"samples={4 * 320}"
    await stream.aclose()
    assert good.streams[0].closed


async def test_stt_no_final_after_flush_switches_within_timeout(cooldowns, switches) -> None:
    silent, good = ScriptedSTT("silent", "silent"), ScriptedSTT("good")
    stt = switching_stt([(silent, 0.2), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    for _ in range(6):
        await stream.push(FRAME)
    await stream.flush()
    for _ in range(2):  # the next turn has already started when the switch happens
        await stream.push(FRAME)
    assert (await next_final(events)).text == f"samples={6 * 320}"
    assert switches[0][3].code == "timeout"  # type: ignore[attr-defined]
    await stream.flush()
    assert (await next_final(events)).text == f"samples={2 * 320}"
    await stream.aclose()


async def test_stt_broken_transcript_stream_switches(cooldowns, switches) -> None:
    broken, good = ScriptedSTT("broken", "events_fail"), ScriptedSTT("good")
    stt = switching_stt([(broken, 5.0), (good, 5.0)], on_switch=on_switch_into(switches),
                      cooldowns=cooldowns)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    for _ in range(3):
        await stream.push(FRAME)
    await stream.flush()
    assert (await next_final(events)).text == f"samples={3 * 320}"
    assert [(f, t) for _, f, t, _ in switches] == [("broken", "good")]
    await stream.aclose()


async def test_stt_open_failure_uses_next_and_all_failing_raises(cooldowns, switches) -> None:
    stt = switching_stt([(ScriptedSTT("a", open_fails=True), 5.0), (ScriptedSTT("b"), 5.0)],
                      on_switch=on_switch_into(switches), cooldowns=cooldowns)
    stream = await stt.open(16000, "en-US")
    assert stream.provider_name == "b"
    await stream.aclose()

    dead = switching_stt([(ScriptedSTT("c", open_fails=True), 5.0),
                        (ScriptedSTT("d", open_fails=True), 5.0)], cooldowns=cooldowns)
    with pytest.raises(ProviderError, match="d: 401"):
        await dead.open(16000, "en-US")


async def test_stt_last_provider_failing_surfaces_on_events_and_push(cooldowns) -> None:
    stt = switching_stt([(ScriptedSTT("a", "fail_push"), 5.0),
                       (ScriptedSTT("b", "fail_push"), 5.0)], cooldowns=cooldowns)
    stream = await stt.open(16000, "en-US")
    events = stream.events()
    with pytest.raises(ProviderError, match="b: websocket closed"):
        for _ in range(10):
            await stream.push(FRAME)
            await asyncio.sleep(0.05)  # a push does not wait for the recovery it starts
    with pytest.raises(ProviderError):
        await next_final(events)
    await stream.aclose()


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


class EchoConfig(ProviderConfig):
    reply: str = "echo"


class EchoLLM(LLMProvider):
    name: ClassVar[str] = "test_echo_llm"
    Config = EchoConfig

    async def stream(self, messages, tools=None, settings=None):  # type: ignore[override]
        yield TextDelta(self.config.reply)  # type: ignore[attr-defined]


class BrokenLLM(LLMProvider):
    name: ClassVar[str] = "test_broken_llm"
    Config = ProviderConfig

    async def stream(self, messages, tools=None, settings=None):  # type: ignore[override]
        raise ProviderError(self.name, "down")
        yield  # pragma: no cover - makes this an async generator


class NullSTT(STTProvider):
    name: ClassVar[str] = "test_null_stt"
    Config = ProviderConfig

    async def open(self, sample_rate: int, language: str) -> STTStream:
        raise ProviderError(self.name, "unused")


class NullTTS(TTSProvider):
    name: ClassVar[str] = "test_null_tts"
    Config = ProviderConfig

    async def synthesize(self, text, voice=None):  # type: ignore[override]
        yield AudioChunk(np.zeros(10, dtype=np.int16), 16000)


@pytest.fixture
def test_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = dict(registry._extra)
    for cls in (EchoLLM, BrokenLLM, NullSTT, NullTTS):
        extra[(cls.kind, cls.name)] = cls
    monkeypatch.setattr(registry, "_extra", extra)


async def test_factory_single_block_is_the_bare_provider(ctx, test_providers) -> None:
    llm = build_provider("llm", {"provider": "test_echo_llm", "reply": "hi"}, ctx)
    assert isinstance(llm, EchoLLM) and llm.config.reply == "hi"  # type: ignore[attr-defined]
    tts = build_provider("tts", SimpleNamespace(provider="test_null_tts", timeout_s=2.0,
                                                fallback=[], options=lambda: {}), ctx)
    assert isinstance(tts, NullTTS)


async def test_factory_builds_the_chain_from_an_agent_block(ctx, test_providers, cooldowns,
                                                           switches) -> None:
    from app.agent_config import ProviderBlock

    block = ProviderBlock.model_validate({
        "provider": "test_broken_llm", "timeout_s": 1.5,
        "fallback": [{"provider": "test_echo_llm", "reply": "backup speaking"}],
    })
    llm = build_provider("llm", block, ctx, on_switch=on_switch_into(switches),
                         cooldowns=cooldowns)
    assert isinstance(llm, FallbackLLM)
    assert [type(p) for p in llm.providers] == [BrokenLLM, EchoLLM]
    assert await collect_text(llm.stream(MESSAGES)) == "backup speaking"
    assert [(f, t) for _, f, t, _ in switches] == [("test_broken_llm", "test_echo_llm")]

    stt = build_provider("stt", {"provider": "test_null_stt",
                                 "fallback": [{"provider": "test_null_stt"}]}, ctx)
    assert isinstance(stt, RecoveringSTT)


async def test_factory_rejects_unknown_and_invalid(ctx, test_providers) -> None:
    with pytest.raises(registry.UnknownProvider):
        build_provider("llm", {"provider": "no_such_vendor"}, ctx)
    with pytest.raises(registry.ValidationError):
        build_provider("llm", {"provider": "test_echo_llm", "rply": "typo"}, ctx)
    with pytest.raises(registry.UnknownProvider):  # a TTS name where an LLM is expected
        build_provider("llm", {"provider": "test_null_tts"}, ctx)
