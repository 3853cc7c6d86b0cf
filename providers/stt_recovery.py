"""STT recovery: the one layer that keeps a caller's words when a speech-to-text stream breaks.

`RecoveringSTT` wraps an agent's STT chain (the primary, then its fallbacks; a lone primary is a
chain of one) and is the only place a call's not-yet-recognised audio is held:

- `ReplayBuffer`: the audio of the current utterance that no final transcript has covered yet,
  bounded by `replay_max_s` (a longer utterance keeps its most recent part).
- `STTRecovery`, the policy: when the current stream breaks (an error from push, flush or its
  transcripts, or a transcript stream that ends by itself), the same provider is reopened up to
  `reconnect_attempts` times within `reconnect_budget_s` of the loss; each new stream gets the
  buffered audio again, then a pending flush. When the attempts or the budget run out, the next
  provider of the chain takes over the same way (cooled down, reported through `on_switch`).
  Once the caller waits for a final (a flush is pending), a provider with a fallback is given
  only its `timeout_s` from that flush: the caller's wait is bounded as if the final were late.
  Reopenings run in a task of their own: a push or flush never waits for one.
  A provider that is *slow* rather than broken — no final within its `timeout_s` of a flush, or
  a stream failing with a `timeout` — is not reopened: that would spend the caller's wait on it
  again; the next provider takes over at once.
- When every provider has failed, the last error surfaces on `events()` and `push()`; the
  engine reports it, apologises and reopens the stream later (its own bounded loop).

Result times (`start_ms`, `end_ms`) are mapped onto the stream's own clock across reopenings:
each new stream starts at the first replayed sample. A `ProviderError` with `retryable=False`
(bad input or configuration) surfaces at once without a reopen or a switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from pipelines.audio.inbox import AudioFormat
from pipelines.engine.caller_audio import ENGINE_FORMAT, open_stt, stt_format
from pipelines.ports import FormatChoosingSTT, PauseFinalizingStream
from providers.base import (
    Kind,
    ProviderError,
    STTStream,
    Transcript,
    TranscriptQueue,
    queued_transcripts,
)
from providers.fallback import (
    DEFAULT_COOLDOWN_S,
    Cooldowns,
    Link,
    OnSwitch,
    _aclose_quietly,
    _fatal,
    _name,
    _timeout_error,
    _Wrapper,
)
from providers.http import RetryPolicy

log = logging.getLogger(__name__)

# Longest wait, when a stream closes, for broken streams still closing in the background.
RETIRE_WAIT_S = 3.0


@dataclass(frozen=True, slots=True)
class STTRecovery:
    """How a broken STT stream is recovered (the agent config's top-level `stt` block)."""

    # Reopenings of the same provider after a broken stream, before the next one takes over.
    reconnect_attempts: int = 3
    # Wall-clock cap on one episode of reopenings, from the loss: past it the next provider
    # takes over (or the error surfaces) instead of the caller talking into a void.
    reconnect_budget_s: float = 3.0
    # Most audio kept for replay; a longer utterance replays only its last part.
    replay_max_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Delay before reopening attempt `attempt` (1-based): short, a dropped socket usually
        reconnects at once, and jittered so calls hit by the same outage spread out."""
        return RetryPolicy(base_delay_s=0.2, max_delay_s=1.0).backoff(attempt)


class ReplayBuffer:
    """The audio the current stream has not turned into a final transcript yet, by stream time.

    `pending` is what a requested flush covers (awaiting its final), `current` what came after.
    Bounded by samples: past `max_samples` the oldest audio goes first.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max(1, max_samples)
        # (stream sample of the frame's start, frame)
        self.pending: deque[tuple[int, np.ndarray]] = deque()
        self.current: deque[tuple[int, np.ndarray]] = deque()
        self.samples = 0  # buffered samples
        self.end = 0  # stream samples pushed so far

    def add(self, frame: np.ndarray) -> None:
        frame = frame.copy()  # the caller may reuse its frame buffer
        self.current.append((self.end, frame))
        self.end += len(frame)
        self.samples += len(frame)
        while self.samples > self.max_samples:
            _, old = self.pending.popleft() if self.pending else self.current.popleft()
            self.samples -= len(old)

    @property
    def start(self) -> int:
        """Stream sample where a replay begins (the end of the stream when nothing is kept)."""
        for part in (self.pending, self.current):
            if part:
                return part[0][0]
        return self.end

    def flushed(self) -> None:
        self.pending.extend(self.current)
        self.current.clear()

    def finalised(self) -> None:
        """The flush's final arrived: what it covered is recognised."""
        self.samples -= sum(len(f) for _, f in self.pending)
        self.pending.clear()

    def covered_until(self, sample: int) -> None:
        """A final the provider decided on its own covers the audio up to `sample`."""
        for part in (self.pending, self.current):
            while part and part[0][0] + len(part[0][1]) <= sample:
                _, old = part.popleft()
                self.samples -= len(old)


async def _open(provider: Any, fmt: AudioFormat, language: str) -> STTStream:
    return cast(STTStream, await open_stt(provider, fmt, language))


class RecoveringSTT(_Wrapper):
    """An agent's STT: its provider chain behind one recovery policy and one replay buffer."""

    kind: Kind = "stt"

    def __init__(self, providers: Sequence[tuple[Any, float]], *,
                 recovery: STTRecovery | None = None, on_switch: OnSwitch | None = None,
                 cooldown_s: float = DEFAULT_COOLDOWN_S,
                 cooldowns: Cooldowns | None = None) -> None:
        super().__init__(providers, on_switch=on_switch, cooldown_s=cooldown_s,
                         cooldowns=cooldowns)
        self.recovery = recovery or STTRecovery()

    async def open(self, sample_rate: int, language: str) -> RecoveringSTTStream:
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

    async def open_as(self, fmt: AudioFormat, language: str) -> RecoveringSTTStream:
        stream = RecoveringSTTStream(self, fmt, language)
        await stream._start()
        return stream


class RecoveringSTTStream(STTStream):
    def __init__(self, owner: RecoveringSTT, fmt: AudioFormat, language: str) -> None:
        self._chain = owner._chain
        self._policy = owner.recovery
        self._format = fmt
        self._language = language
        self._order = self._chain.order()
        self._index = -1
        self._inner: STTStream | None = None
        self._origin_ms = 0  # stream time of the current inner stream's first sample
        self._pump: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._out: TranscriptQueue = asyncio.Queue()
        self._replay = ReplayBuffer(int(self._policy.replay_max_s * fmt.sample_rate))
        self._awaiting_final = False
        self._flushed_at: float | None = None  # loop time of the pending flush
        self._recovering = asyncio.Lock()
        self._reopening: asyncio.Timeout | None = None  # the reopening episode's deadline
        self._error: BaseException | None = None
        self._closed = False
        # Broken streams being closed in the background (see `_retire`).
        self._retiring: set[asyncio.Task[None]] = set()
        # Recoveries under way (see `_recover_soon`).
        self._recoveries: set[asyncio.Task[None]] = set()
        # The current reopening episode: when the stream was lost, attempts made since.
        self._lost_at: float | None = None
        self._attempts = 0

    @property
    def provider_name(self) -> str:
        return _name(self._order[self._index]) if self._index >= 0 else ""

    @property
    def finalizes_at_pauses(self) -> bool:
        """As the provider now in use (a failover may move to a batch engine)."""
        inner = self._inner
        return isinstance(inner, PauseFinalizingStream) and inner.finalizes_at_pauses

    # -- opening, reopening, switching --------------------------------------------------------

    async def _start(self) -> None:
        await self._open_from(0, None)
        if self._error is not None:
            raise self._error

    def _next_link(self, index: int) -> Link | None:
        return self._order[index + 1] if index + 1 < len(self._order) else None

    async def _attach(self, index: int, timeout_s: float | None) -> STTStream:
        """Open provider `index` and replay the buffer (and a pending flush) into it; on any
        failure the half-opened stream is closed and the error raised."""
        link = self._order[index]
        inner: STTStream | None = None
        origin = self._replay.start
        try:
            async with asyncio.timeout(timeout_s):
                inner = await _open(link.provider, self._format, self._language)
                for _, frame in list(self._replay.pending):
                    await inner.push(frame)
                if self._awaiting_final:
                    await inner.flush()
                for _, frame in list(self._replay.current):
                    await inner.push(frame)
        except TimeoutError:
            if inner is not None:
                self._retire(inner)
            raise _timeout_error(link, "stream") from None
        except Exception:
            if inner is not None:
                self._retire(inner)
            raise
        except BaseException:  # cancelled (the stream is closing): no leaks
            if inner is not None:
                await _aclose_quietly(inner)
            raise
        self._origin_ms = round(origin * 1000 / self._format.sample_rate)
        return inner

    def _use(self, index: int, inner: STTStream) -> None:
        if index != self._index:
            self._lost_at, self._attempts = None, 0  # a new provider starts with a full budget
        self._index = index
        self._inner = inner
        self._pump = asyncio.create_task(self._run_pump(inner), name="stt-recovery-pump")
        if self._awaiting_final:
            self._arm_watchdog()

    async def _open_from(self, start: int, previous: BaseException | None) -> None:
        """Open providers from `start` on until one takes the replayed audio; on exhaustion
        record the last error (raised to the caller and on `events()`)."""
        error = previous
        for i in range(start, len(self._order)):
            link, nxt = self._order[i], self._next_link(i)
            try:
                inner = await self._attach(i, link.timeout_s if nxt is not None else None)
            except Exception as exc:
                error = exc
                if self._chain.give_up(link, exc, nxt):
                    break
                continue
            if self._closed:
                await _aclose_quietly(inner)
                return
            self._use(i, inner)
            return
        self._fail(error or ProviderError("stt", "no STT provider available"))

    async def _reopen(self, error: BaseException) -> BaseException | None:
        """Reopen the current provider after `error` broke its stream, within the policy's
        attempts and budget. None when a new stream is in place, else the last error.

        One episode spans reopenings until a new stream proves itself with a transcript: a
        vendor that accepts the connection and drops it again at once uses up the episode.
        While the caller waits for a final (a flush is pending) and a fallback exists, the
        episode also ends at the provider's `timeout_s` from that flush (see `_hurry`)."""
        policy = self._policy
        if self._lost_at is None:
            self._lost_at, self._attempts = time.monotonic(), 0
        link = self._order[self._index]
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + policy.reconnect_budget_s - (time.monotonic() - self._lost_at)
        try:
            async with asyncio.timeout_at(budget_end) as self._reopening:
                self._hurry()
                while self._attempts < policy.reconnect_attempts:
                    self._attempts += 1
                    left = (self._reopening.when() or budget_end) - loop.time()
                    await asyncio.sleep(min(left / 2, policy.backoff(self._attempts)))
                    if self._closed:
                        return None
                    try:
                        inner = await self._attach(self._index, None)
                    except Exception as exc:
                        log.info("stt provider %s: reopening failed (attempt %d): %s",
                                 _name(link), self._attempts, exc)
                        error = exc
                        if _fatal(exc):
                            break
                        continue
                    if self._closed:
                        await _aclose_quietly(inner)
                        return None
                    log.info("stt provider %s: stream reopened (attempt %d), replayed %.2fs of "
                             "audio", _name(link), self._attempts,
                             self._replay.samples / self._format.sample_rate)
                    self._use(self._index, inner)
                    return None
        except TimeoutError:
            pass  # the budget (or the caller's wait) ran out: `error` says why the last failed
        finally:
            self._reopening = None
        log.warning("stt provider %s: not reopened (%d attempts within %gs): %s", _name(link),
                    self._attempts, policy.reconnect_budget_s, error)
        return error

    def _hurry(self) -> None:
        """A caller waiting for a final must not wait out the whole reconnect budget on a
        provider that is being reopened: with a fallback to go to, reopening ends at the
        provider's `timeout_s` from the flush, as a final that never came would."""
        timeout = self._reopening
        link = self._order[self._index]
        if timeout is None or self._flushed_at is None or self._next_link(self._index) is None:
            return
        until = self._flushed_at + link.timeout_s
        when = timeout.when()
        if when is None or until < when:
            timeout.reschedule(until)

    def _recover_soon(self, inner: STTStream, error: BaseException) -> None:
        """`inner` broke with `error`: if it is still the current stream, it is detached at
        once (nothing more goes to it; new frames wait in the replay buffer) and `_recover` runs
        in a task of its own, which `aclose` cancels. A push or flush does not wait out a
        reopening (a flush during it shortens it, see `_hurry`)."""
        if self._closed or inner is not self._inner or self._error is not None:
            return
        self._inner = None
        self._disarm_watchdog()
        pump, self._pump = self._pump, None
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
        self._retire(inner)
        task = asyncio.create_task(self._recover(error), name="stt-recovery")
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, error: BaseException) -> None:
        """After a break: reopen the current provider, else move on to the next one, else
        fail."""
        async with self._recovering:  # one at a time: a reopened stream may break again
            if self._closed:
                return
            if _fatal(error):
                self._fail(error)
                return
            if not _slow(error):
                log.warning("stt provider %s: stream broke (%s); reopening",
                            _name(self._order[self._index]), error)
                last = await self._reopen(error)
                if last is None:
                    return
                error = last
                if _fatal(error):
                    self._fail(error)
                    return
            link, nxt = self._order[self._index], self._next_link(self._index)
            if self._chain.give_up(link, error, nxt):
                self._fail(error)
                return
            await self._open_from(self._index + 1, error)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._out.put_nowait(error)

    def _retire(self, inner: STTStream) -> None:
        """Close a broken stream without waiting for it: a vendor that hangs may also sit on
        our goodbye (Deepgram's CloseStream is answered, if at all, by the server that just
        stopped answering), and the caller's turn must not wait for that on top of the
        timeout that exposed it."""
        task = asyncio.create_task(_aclose_quietly(inner), name="stt-recovery-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _run_pump(self, inner: STTStream) -> None:
        try:
            async for t in inner.events():
                self._on_transcript(t)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._recover_soon(inner, exc)
            return
        if not self._closed and inner is self._inner:
            name = _name(self._order[self._index])
            self._recover_soon(inner, ProviderError(name, "transcript stream ended "
                                                    "unexpectedly", code="closed"))

    def _on_transcript(self, t: Transcript) -> None:
        self._lost_at, self._attempts = None, 0  # the stream works: the episode is over
        if self._origin_ms:
            t = dataclasses.replace(t, start_ms=t.start_ms + self._origin_ms,
                                    end_ms=t.end_ms + self._origin_ms)
        if t.is_final and self._awaiting_final:
            self._awaiting_final, self._flushed_at = False, None
            self._replay.finalised()
            self._disarm_watchdog()
        elif t.is_final and t.end_ms > t.start_ms:
            # A final the provider decided on its own (its endpointing): a replay must not
            # send that audio again, or its words would reach the turn twice.
            self._replay.covered_until(t.end_ms * self._format.sample_rate // 1000)
        self._out.put_nowait(t)

    def _arm_watchdog(self) -> None:
        self._disarm_watchdog()
        if self._next_link(self._index) is None or self._inner is None:
            return  # nothing to switch to: wait as long as the provider needs
        self._watchdog = asyncio.create_task(self._watch(self._inner, self._order[self._index]),
                                             name="stt-recovery-watchdog")

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None

    async def _watch(self, inner: STTStream, link: Link) -> None:
        await asyncio.sleep(link.timeout_s)
        if self._awaiting_final and inner is self._inner:
            self._watchdog = None
            self._recover_soon(inner, _timeout_error(link, "final transcript"))

    # -- STTStream ------------------------------------------------------------------------------

    async def push(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        self._replay.add(frame)
        inner = self._inner
        if inner is None:  # a recovery is under way; it replays the buffer, this frame included
            return
        try:
            await inner.push(frame)
        except Exception as exc:
            self._recover_soon(inner, exc)

    async def flush(self) -> None:
        if self._error is not None:
            raise self._error
        self._replay.flushed()
        if not self._awaiting_final:
            self._flushed_at = asyncio.get_running_loop().time()
        self._awaiting_final = True
        inner = self._inner
        if inner is None:  # being reopened: the caller now waits on it
            self._hurry()
            return
        try:
            await inner.flush()
        except Exception as exc:
            self._recover_soon(inner, exc)
            return
        self._arm_watchdog()

    def events(self) -> AsyncIterator[Transcript]:
        return queued_transcripts(self._out)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._disarm_watchdog()
        pump, self._pump = self._pump, None
        for task in [*self._recoveries, *([pump] if pump is not None else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        inner, self._inner = self._inner, None
        if inner is not None:
            await _aclose_quietly(inner)
        if self._retiring:
            # Their usage reports and sockets belong to this call: let them finish, briefly.
            await asyncio.wait(list(self._retiring), timeout=RETIRE_WAIT_S)
        self._out.put_nowait(None)


def _slow(error: BaseException) -> bool:
    """A provider that stopped answering (rather than one whose connection broke): reopening
    it would make the caller wait on it again, so the next provider takes over at once."""
    return isinstance(error, ProviderError) and error.code == "timeout"
