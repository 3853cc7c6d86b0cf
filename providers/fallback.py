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
  - STT: see `providers.stt_recovery`, which builds on this chain: one recovery layer reopens
    a broken stream or fails over, replaying the current utterance from its one buffer.
- raises the last error when every provider has failed.

A `ProviderError` with `retryable=False` means no attempt can work (the input itself is bad): it
surfaces at once, without a switch. Timeouts only apply while there is a next provider to switch
to: the last one in the chain gets all the time it needs (the engine's own watchdog covers a
provider that never answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import (
    AudioChunk,
    Kind,
    LLMEvent,
    Message,
    ProviderError,
    ToolSpec,
)

log = logging.getLogger(__name__)

# (kind, from_name, to_name, error) -> None. The service turns it into a provider.fallback event.
OnSwitch = Callable[[str, str, str, BaseException], None]

DEFAULT_COOLDOWN_S = 30.0


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
