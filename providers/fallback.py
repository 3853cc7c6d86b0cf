"""Provider fallback: an ordered chain per kind that keeps a call talking when a vendor fails.

Each wrapper takes `[(provider, timeout_s), ...]` in preference order and exposes the same
contract as a single provider. A provider *fails* when it raises (ProviderError or any other
exception) or when its first result takes longer than its `timeout_s`. On failure the wrapper:

- cools the provider down (`Cooldowns`): later requests try it last for `cooldown_s` seconds, so
  one call that discovers an outage spares the others the timeout;
- reports the switch through `on_switch(kind, from_name, to_name, error)`;
- retries the SAME input on the next provider:
  - LLM: the same messages, but only while nothing has been yielded; once text has streamed the
    error surfaces (a second answer glued onto half of the first would be worse than an error).
  - TTS: the same sentence, even after partial audio (the caller hears the sentence restart,
    which beats losing the rest of the answer). The `voice` argument goes to the first provider
    of the chain only; fallbacks use their own configured voice.
  - STT: the stream is reopened on the next provider and the current utterance's audio (kept in
    a bounded replay buffer) is pushed again, followed by `flush()` if one was pending, so the
    user's turn is not lost.
- raises the last error when every provider has failed.

A `ProviderError` with `retryable=False` means no attempt can work (the input itself is bad): it
surfaces at once, without a switch. Timeouts only apply while there is a next provider to switch
to: the last one in the chain gets all the time it needs (the engine's own watchdog covers a
provider that never answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from pipelines.audio.inbox import AudioFormat
from pipelines.engine.caller_audio import ENGINE_FORMAT, open_stt, stt_format
from pipelines.ports import FormatChoosingSTT
from providers.base import (
    AudioChunk,
    Kind,
    LLMEvent,
    Message,
    ProviderError,
    STTStream,
    ToolSpec,
    Transcript,
)

log = logging.getLogger(__name__)

# (kind, from_name, to_name, error) -> None. The service turns it into a provider.fallback event.
OnSwitch = Callable[[str, str, str, BaseException], None]

DEFAULT_COOLDOWN_S = 30.0
# Cap on the STT replay buffer: a longer utterance replays only its last part.
DEFAULT_REPLAY_MAX_S = 20.0
# Longest wait, when a stream closes, for failed streams still closing in the background.
RETIRE_WAIT_S = 3.0


class Cooldowns:
    """When each provider may be preferred again, keyed by (kind, provider identity: its name
    and config fingerprint, see `_identity`).

    One table (`COOLDOWNS`) is shared by every call in the process unless a wrapper is given its
    own (tests do that).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}

    def cool(self, kind: str, name: str, seconds: float) -> None:
        self._until[(kind, name)] = self._clock() + seconds

    def is_cooling(self, kind: str, name: str) -> bool:
        until = self._until.get((kind, name))
        if until is None:
            return False
        if until <= self._clock():
            del self._until[(kind, name)]
            return False
        return True

    def clear(self) -> None:
        self._until.clear()


COOLDOWNS = Cooldowns()


@dataclass(slots=True)
class Link:
    provider: Any  # a Provider of the chain's kind (duck-typed: tests use small fakes)
    timeout_s: float
    key: str  # cool-down key: the provider's identity, disambiguated when a chain repeats it


def _identity(provider: Any) -> str:
    """What an outage is an outage *of*: the provider name plus a fingerprint of its config
    (endpoint, model, credential reference). Two agents that both use `openai` — one against
    Groq, one against OpenAI — must not demote each other's endpoint; the same endpoint used
    by many agents shares one cool-down, which is the point of sharing it."""
    name = str(getattr(provider, "name", type(provider).__name__))
    dump = getattr(getattr(provider, "config", None), "model_dump_json", None)
    if dump is None:
        return name
    return f"{name}:{hashlib.sha256(dump().encode()).hexdigest()[:12]}"


def _links(items: Sequence[tuple[Any, float]]) -> list[Link]:
    if not items:
        raise ValueError("a fallback chain needs at least one provider")
    seen: dict[str, int] = {}
    out: list[Link] = []
    for provider, timeout_s in items:
        ident = _identity(provider)
        n = seen.get(ident, 0)
        seen[ident] = n + 1
        out.append(Link(provider, float(timeout_s), ident if n == 0 else f"{ident}#{n}"))
    return out


def _name(link: Link) -> str:
    return str(getattr(link.provider, "name", link.key))


def _timeout_error(link: Link, what: str) -> ProviderError:
    return ProviderError(_name(link), f"no {what} within {link.timeout_s:g}s", code="timeout")


def _fatal(exc: BaseException) -> bool:
    """Errors that another provider cannot fix: surface them without switching."""
    return isinstance(exc, ProviderError) and not exc.retryable


class _Chain:
    """Shared bookkeeping: order of attempts, cool-down and switch reports."""

    def __init__(self, kind: Kind, items: Sequence[tuple[Any, float]], on_switch: OnSwitch | None,
                 cooldown_s: float, cooldowns: Cooldowns | None) -> None:
        self.kind = kind
        self.links = _links(items)
        self.on_switch = on_switch
        self.cooldown_s = cooldown_s
        self.cooldowns = cooldowns if cooldowns is not None else COOLDOWNS

    def order(self) -> list[Link]:
        """Providers to try, in preference order; cooling ones go last, as a last resort."""
        ready = [x for x in self.links if not self.cooldowns.is_cooling(self.kind, x.key)]
        cooling = [x for x in self.links if x not in ready]
        return ready + cooling

    def cool(self, link: Link) -> None:
        self.cooldowns.cool(self.kind, link.key, self.cooldown_s)

    def failed(self, link: Link, error: BaseException, nxt: Link) -> None:
        """`link` failed and `nxt` takes over: cool the former down and report the switch."""
        self.cool(link)
        log.warning("%s provider %s failed (%s); switching to %s", self.kind, _name(link),
                    error, _name(nxt))
        if self.on_switch is not None:
            try:
                self.on_switch(self.kind, _name(link), _name(nxt), error)
            except Exception:
                log.exception("on_switch callback failed")

    def give_up(self, link: Link, error: BaseException, nxt: Link | None,
                *, partial: bool = False) -> bool:
        """Decide what a failure of `link` means. Returns True when the error must surface (no
        next provider, a non-retryable error, or `partial` output already delivered); otherwise
        the switch to `nxt` is recorded and the caller retries there."""
        if _fatal(error):
            return True  # the input is at fault, not the provider: no cool-down either
        if nxt is None or partial:
            self.cool(link)
            return True
        self.failed(link, error, nxt)
        return False

    async def aclose(self) -> None:
        for link in self.links:
            close = getattr(link.provider, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    log.exception("closing %s provider %s failed", self.kind, _name(link))


async def _aclose_quietly(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception as exc:  # the provider already failed or finished; nothing to add
        log.debug("closing a provider iterator failed: %s", exc)


async def _next_within(it: AsyncIterator[Any], timeout_s: float | None) -> Any:
    # asyncio.timeout (not wait_for) keeps the step in the current task, so adapters that hold
    # task-bound resources (cancel scopes) across yields stay valid.
    if timeout_s is None:
        return await anext(it)
    async with asyncio.timeout(timeout_s):
        return await anext(it)


class _Wrapper:
    kind: Kind

    def __init__(self, providers: Sequence[tuple[Any, float]], *,
                 on_switch: OnSwitch | None = None, cooldown_s: float = DEFAULT_COOLDOWN_S,
                 cooldowns: Cooldowns | None = None) -> None:
        self._chain = _Chain(self.kind, providers, on_switch, cooldown_s, cooldowns)

    @property
    def name(self) -> str:
        """The preferred provider's name (what the agent config asked for)."""
        return _name(self._chain.links[0])

    @property
    def providers(self) -> list[Any]:
        return [x.provider for x in self._chain.links]

    async def aclose(self) -> None:
        await self._chain.aclose()


# ---------------------------------------------------------------------------------------------
# LLM
# ---------------------------------------------------------------------------------------------


class FallbackLLM(_Wrapper):
    kind: Kind = "llm"

    async def stream(self, messages: list[Message], tools: list[ToolSpec] | None = None,
                     settings: dict[str, Any] | None = None) -> AsyncIterator[LLMEvent]:
        order = self._chain.order()
        for i, link in enumerate(order):
            nxt = order[i + 1] if i + 1 < len(order) else None
            produced = False
            it: AsyncIterator[LLMEvent] | None = None
            failure: BaseException | None = None
            try:
                it = aiter(link.provider.stream(messages, tools, settings))
                while True:
                    try:
                        event = await _next_within(
                            it, link.timeout_s if nxt is not None and not produced else None)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        failure = _timeout_error(link, "first token")
                        break
                    except Exception as exc:
                        failure = exc
                        break
                    if getattr(event, "kind", None) != "usage":
                        produced = True
                    yield event
            except Exception as exc:  # stream() itself raised before returning an iterator
                failure = exc
            finally:
                if it is not None:
                    await _aclose_quietly(it)
            assert failure is not None  # the loop only falls through after a failure
            if self._chain.give_up(link, failure, nxt, partial=produced):
                raise failure


# ---------------------------------------------------------------------------------------------
# TTS
# ---------------------------------------------------------------------------------------------


class FallbackTTS(_Wrapper):
    kind: Kind = "tts"

    @property
    def sample_rate(self) -> int:
        # Chunks carry their own rate; this is the preferred provider's native one.
        return int(getattr(self._chain.links[0].provider, "sample_rate", 16000))

    def prefers_mulaw(self) -> bool:
        prefers = getattr(self._chain.links[0].provider, "prefers_mulaw", None)
        return bool(prefers()) if prefers is not None else False

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[AudioChunk]:
        order = self._chain.order()
        primary = self._chain.links[0]
        for i, link in enumerate(order):
            nxt = order[i + 1] if i + 1 < len(order) else None
            got_audio = False
            it: AsyncIterator[AudioChunk] | None = None
            failure: BaseException | None = None
            try:
                it = aiter(link.provider.synthesize(text, voice if link is primary else None))
                while True:
                    try:
                        chunk = await _next_within(
                            it, link.timeout_s if nxt is not None and not got_audio else None)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        failure = _timeout_error(link, "audio")
                        break
                    except Exception as exc:
                        failure = exc
                        break
                    got_audio = True
                    yield chunk
            except Exception as exc:
                failure = exc
            finally:
                if it is not None:
                    await _aclose_quietly(it)
            assert failure is not None  # the loop only falls through after a failure
            if self._chain.give_up(link, failure, nxt):
                raise failure


# ---------------------------------------------------------------------------------------------
# STT
# ---------------------------------------------------------------------------------------------


class FallbackSTT(_Wrapper):
    kind: Kind = "stt"

    def __init__(self, providers: Sequence[tuple[Any, float]], *,
                 on_switch: OnSwitch | None = None, cooldown_s: float = DEFAULT_COOLDOWN_S,
                 cooldowns: Cooldowns | None = None,
                 replay_max_s: float = DEFAULT_REPLAY_MAX_S) -> None:
        super().__init__(providers, on_switch=on_switch, cooldown_s=cooldown_s,
                         cooldowns=cooldowns)
        self.replay_max_s = replay_max_s

    async def open(self, sample_rate: int, language: str) -> FallbackSTTStream:
        return await self.open_as(AudioFormat(sample_rate, "pcm16"), language)

    def input_format(self, carrier: AudioFormat) -> AudioFormat:
        """`FormatChoosingSTT`: a format every provider of the chain takes, so a switch can
        replay the same audio: the one they all ask for; else PCM at the call's rate when they
        all choose (each takes that); else 16 kHz PCM."""
        wanted = {stt_format(x.provider, carrier) for x in self._chain.links}
        if len(wanted) == 1:
            return wanted.pop()
        if all(isinstance(x.provider, FormatChoosingSTT) for x in self._chain.links):
            return AudioFormat(carrier.sample_rate, "pcm16")
        return ENGINE_FORMAT

    async def open_as(self, fmt: AudioFormat, language: str) -> FallbackSTTStream:
        stream = FallbackSTTStream(self._chain, fmt, language, self.replay_max_s)
        await stream._start()
        return stream


async def _open_stt(provider: Any, fmt: AudioFormat, language: str) -> STTStream:
    return cast(STTStream, await open_stt(provider, fmt, language))


class _Replay:
    """The audio the current provider has not yet turned into a final transcript.

    `pending` is what a requested flush covers (awaiting its final), `current` what came after.
    Bounded by samples: a longer utterance keeps its most recent part.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.pending: deque[np.ndarray] = deque()
        self.current: deque[np.ndarray] = deque()
        self._samples = 0

    def add(self, frame: np.ndarray) -> None:
        frame = frame.copy()  # the caller may reuse its frame buffer
        self.current.append(frame)
        self._samples += len(frame)
        while self._samples > self.max_samples:
            old = self.pending.popleft() if self.pending else self.current.popleft()
            self._samples -= len(old)

    def flushed(self) -> None:
        self.pending.extend(self.current)
        self.current.clear()

    def finalised(self) -> None:
        self._samples -= sum(len(f) for f in self.pending)
        self.pending.clear()


class FallbackSTTStream(STTStream):
    def __init__(self, chain: _Chain, fmt: AudioFormat, language: str,
                 replay_max_s: float) -> None:
        self._chain = chain
        self._format = fmt
        self._language = language
        self._order = chain.order()
        self._index = -1
        self._inner: STTStream | None = None
        self._pump: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._out: asyncio.Queue[Transcript | BaseException | None] = asyncio.Queue()
        self._replay = _Replay(int(replay_max_s * fmt.sample_rate))
        self._awaiting_final = False
        self._switching = asyncio.Lock()
        self._error: BaseException | None = None
        self._closed = False
        # Failed streams being closed in the background (see `_retire`).
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def provider_name(self) -> str:
        return _name(self._order[self._index]) if self._index >= 0 else ""

    # -- lifecycle --------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._open_from(0, None)
        if self._error is not None:
            raise self._error

    async def _open_from(self, start: int, previous: BaseException | None) -> None:
        """Open providers from `start` on until one accepts the replayed audio; on exhaustion
        record the last error (raised to the caller and on `events()`)."""
        error = previous
        for i in range(start, len(self._order)):
            link = self._order[i]
            nxt = self._order[i + 1] if i + 1 < len(self._order) else None
            inner: STTStream | None = None
            try:
                if nxt is not None:
                    async with asyncio.timeout(link.timeout_s):
                        inner = await _open_stt(link.provider, self._format, self._language)
                else:
                    inner = await _open_stt(link.provider, self._format, self._language)
                for frame in list(self._replay.pending):
                    await inner.push(frame)
                if self._awaiting_final:
                    await inner.flush()
                for frame in list(self._replay.current):
                    await inner.push(frame)
            except Exception as exc:
                error = _timeout_error(link, "stream") if isinstance(exc, TimeoutError) else exc
                if inner is not None:
                    self._retire(inner)
                if self._chain.give_up(link, error, nxt):
                    break
                continue
            except BaseException:  # cancelled mid-switch (the stream is closing): no leaks
                if inner is not None:
                    await _aclose_quietly(inner)
                raise
            if self._closed:
                await _aclose_quietly(inner)
                return
            self._index = i
            self._inner = inner
            self._pump = asyncio.create_task(self._run_pump(inner), name="stt-fallback-pump")
            if self._awaiting_final:
                self._arm_watchdog()
            return
        self._fail(error or ProviderError("fallback", "no STT provider available"))

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._out.put_nowait(error)

    def _retire(self, inner: STTStream) -> None:
        """Close a failed stream without waiting for it: a vendor that hangs may also sit on
        our goodbye (Deepgram's CloseStream is answered, if at all, by the server that just
        stopped answering), and the caller's turn must not wait for that on top of the
        timeout that exposed it."""
        task = asyncio.create_task(_aclose_quietly(inner), name="stt-fallback-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _switch(self, inner: STTStream, error: BaseException) -> None:
        """Move off `inner` (if it is still the current stream) to the next provider."""
        async with self._switching:
            if self._closed or inner is not self._inner or self._error is not None:
                return
            link = self._order[self._index]
            self._inner = None
            self._disarm_watchdog()
            pump, self._pump = self._pump, None
            if pump is not None and pump is not asyncio.current_task():
                pump.cancel()
            self._retire(inner)
            nxt_index = self._index + 1
            nxt = self._order[nxt_index] if nxt_index < len(self._order) else None
            if self._chain.give_up(link, error, nxt):
                self._fail(error)
                return
            await self._open_from(nxt_index, error)

    async def _run_pump(self, inner: STTStream) -> None:
        try:
            async for t in inner.events():
                if t.is_final and self._awaiting_final:
                    self._awaiting_final = False
                    self._replay.finalised()
                    self._disarm_watchdog()
                self._out.put_nowait(t)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._switch(inner, exc)
            return
        if not self._closed and inner is self._inner:
            name = _name(self._order[self._index])
            await self._switch(inner, ProviderError(name, "transcript stream ended unexpectedly"))

    def _arm_watchdog(self) -> None:
        self._disarm_watchdog()
        if self._index + 1 >= len(self._order) or self._inner is None:
            return  # nothing to switch to: wait as long as the provider needs
        self._watchdog = asyncio.create_task(self._watch(self._inner, self._order[self._index]),
                                             name="stt-fallback-watchdog")

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None

    async def _watch(self, inner: STTStream, link: Link) -> None:
        await asyncio.sleep(link.timeout_s)
        if self._awaiting_final and inner is self._inner:
            self._watchdog = None
            await self._switch(inner, _timeout_error(link, "final transcript"))

    # -- STTStream --------------------------------------------------------------------------

    async def push(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        self._replay.add(frame)
        inner = self._inner
        if inner is None:  # a switch is in progress; it replays the buffer including this frame
            return
        try:
            await inner.push(frame)
        except Exception as exc:
            await self._switch(inner, exc)
            if self._error is not None:
                raise self._error from None

    async def flush(self) -> None:
        if self._error is not None:
            raise self._error
        self._replay.flushed()
        self._awaiting_final = True
        inner = self._inner
        if inner is None:
            return
        try:
            await inner.flush()
        except Exception as exc:
            await self._switch(inner, exc)
            if self._error is not None:
                raise self._error from None
            return
        self._arm_watchdog()

    async def events(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                self._out.put_nowait(item)  # every later reader sees the failure too
                raise item
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._disarm_watchdog()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        inner, self._inner = self._inner, None
        if inner is not None:
            await _aclose_quietly(inner)
        if self._retiring:
            # Their usage reports and sockets belong to this call: let them finish, briefly.
            await asyncio.wait(list(self._retiring), timeout=RETIRE_WAIT_S)
        self._out.put_nowait(None)
