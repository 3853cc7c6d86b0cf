"""llama.cpp LLM (llama-cpp-python): any GGUF chat model, SmolLM2-135M-Instruct by default.

Each generation runs on its own thread and streams tokens back through a bounded queue; closing
or cancelling the iterator stops generation at the next token. At most `max_concurrent`
generations per model run at once in the process (each needs its own llama.cpp context, see
`llama_pool`); further requests wait for a free context. Contexts are loaded once, off the event
loop, and shared by every call through `ctx.shared`. A context keeps its last prompt's KV cache
and llama.cpp reuses the longest common prefix, so a call's later turns evaluate only the new
messages; `prefill` does the same for the first turn by evaluating the system prompt and greeting
while the greeting plays.

Small local models have no native tool support: tools are offered only when `tools_enabled`, by
describing them in the system prompt (see `prompted_tools`). Usage: `input_tokens` and
`output_tokens`, yielded as Usage events at the end of a generation. Latency: `ttfb_ms` from the
request (including any wait for a free context) to the first token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from providers.base import (
    LLMEvent,
    LLMProvider,
    Message,
    ProviderConfig,
    ProviderContext,
    ProviderError,
    TextDelta,
    ToolSpec,
    Usage,
)
from providers.llm.llama_pool import NAME, LlamaPool, ModelSpec, Slot
from providers.llm.prompted_tools import ToolReplyParser, plain_chat
from providers.llm.sentence_limit import SentenceLimit
from providers.threaded import run_in_thread
from providers.usage import FirstResultClock

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Tokens kept free for the template's own markup around each message when fitting the context.
_PER_MESSAGE_OVERHEAD = 8
# The user turn added when a conversation has none yet (chat templates need one).
_FILLER_TURN = "Hello."


class LlamaCppConfig(ProviderConfig):
    # A GGUF file: a name resolved against the models dir, or an absolute path.
    model: str = DEFAULT_MODEL
    n_ctx: int = Field(2048, ge=256, le=131072)
    n_threads: int = Field(1, ge=1, le=64)
    n_batch: int = Field(256, ge=16, le=4096)
    max_tokens: int = Field(120, ge=1, le=8192)
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    # Small models loop easily; a mild penalty keeps answers from repeating themselves.
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0)
    stop: list[str] = Field(default_factory=list)
    # End the answer after this many sentences (spoken answers: small models ramble past what
    # they were asked for). Not applied while tools are offered: a JSON call must stay whole.
    max_sentences: int | None = Field(None, ge=1, le=50)
    seed: int | None = None
    # Process-wide bound on concurrent generations with this model.
    max_concurrent: int = Field(2, ge=1, le=64)
    # Describe the agent's tools in the prompt and parse JSON replies into tool calls.
    tools_enabled: bool = False


class LlamaCppLLM(LLMProvider):
    name: ClassVar[str] = NAME
    Config: ClassVar[type[ProviderConfig]] = LlamaCppConfig
    config: LlamaCppConfig
    # Only the default model is fetched by `phonebooth models fetch`; others are the user's.
    required_models: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ProviderConfig, ctx: ProviderContext) -> None:
        super().__init__(config, ctx)
        self._last_slot: Slot | None = None

    @classmethod
    def model_files(cls, config: ProviderConfig) -> list[str]:
        assert isinstance(config, LlamaCppConfig)
        return [config.model]

    @property
    def model_name(self) -> str:
        return Path(self.config.model).name

    def model_path(self) -> str:
        p = Path(self.config.model).expanduser()
        return str(p if p.is_absolute() else Path(self.ctx.models_dir) / p)

    def pool(self) -> LlamaPool:
        cfg = self.config
        spec = ModelSpec(self.model_path(), cfg.n_ctx, cfg.n_threads, cfg.n_batch)
        pools: dict[ModelSpec, LlamaPool] = self.ctx.shared.setdefault(NAME, {})
        pool = pools.get(spec)
        if pool is None:
            pool = pools.setdefault(spec, LlamaPool(spec, cfg.max_concurrent))
        pool.grow(cfg.max_concurrent)
        return pool

    async def warm(self) -> None:
        """Load one context now (startup) rather than on the first turn."""
        pool = self.pool()
        slot = await pool.acquire(self._last_slot)
        self._last_slot = slot
        pool.release(slot)

    async def prefill(self, messages: list[Message], tools: list[ToolSpec] | None = None) -> bool:
        """Evaluate the start of a conversation (system prompt, greeting) into a context now,
        while nobody waits for it; the first answer then evaluates only the caller's words, as
        llama.cpp reuses the longest common token prefix of a context's last prompt. On one
        thread SmolLM2 evaluates ~200 prompt tokens/s, so this takes ~0.5 s off the first turn.

        Returns False without doing anything when every context is busy and no more may be
        loaded: a prefill never makes a generation wait. Once started it runs to the end on its
        worker thread (cancelling the await only stops waiting for it); the context goes back to
        the pool from that thread."""
        cfg = self.config
        offered = list(tools or []) if cfg.tools_enabled else []
        chat = plain_chat(messages, offered)
        # A user turn closes the prefix at "<user turn starts>", just where the caller's words
        # will go; its content is what `stream` itself uses when a conversation has none.
        if not chat or chat[-1]["role"] != "user":
            chat.append({"role": "user", "content": _FILLER_TURN})
        pool = self.pool()
        slot = await pool.acquire(self._last_slot, wait=False)
        if slot is None:
            return False
        self._last_slot = slot
        budget = cfg.n_ctx - cfg.max_tokens

        def evaluate() -> None:
            try:
                llama = slot.llama
                llama.create_chat_completion(messages=_fit(llama, chat, budget), max_tokens=1,
                                             temperature=0.0)
            finally:
                pool.release(slot)

        try:
            await asyncio.to_thread(evaluate)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(NAME, f"prefill failed: {exc}") from exc
        return True

    async def stream(self, messages: list[Message], tools: list[ToolSpec] | None = None,
                     settings: dict[str, Any] | None = None) -> AsyncIterator[LLMEvent]:
        cfg = self.config
        offered = list(tools or []) if cfg.tools_enabled else []
        chat = plain_chat(messages, offered)
        if not chat or chat[-1]["role"] == "system":
            chat.append({"role": "user", "content": _FILLER_TURN})  # a template needs a turn
        params = self._params(settings or {})
        clock = FirstResultClock(self.ctx, NAME)
        pool = self.pool()
        slot = await pool.acquire(self._last_slot)
        self._last_slot = slot
        handoff = _Handoff(pool, slot)
        parser = ToolReplyParser(offered) if offered else None
        limit = cfg.max_sentences if not offered else None
        events = run_in_thread(self._producer(slot, chat, params, handoff, limit), max_ahead=16,
                               thread_name="llama-generation")
        try:
            async for event in events:
                if isinstance(event, TextDelta) and parser is not None:
                    text = parser.feed(event.text)
                    if not text:
                        continue
                    event = TextDelta(text)
                if isinstance(event, Usage) and parser is not None:
                    call = parser.finish()
                    if call is not None:
                        clock.mark()
                        yield call
                    parser = None
                if isinstance(event, TextDelta):
                    clock.mark()
                yield event
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(NAME, f"generation failed: {exc}") from exc
        finally:
            await events.aclose()
            handoff.release_unclaimed()

    def _params(self, settings: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return {
            "max_tokens": int(settings.get("max_tokens", cfg.max_tokens)),
            "temperature": float(settings.get("temperature", cfg.temperature)),
            "top_p": float(settings.get("top_p", cfg.top_p)),
            "repeat_penalty": cfg.repeat_penalty,
            "stop": list(cfg.stop),
            "seed": settings.get("seed", cfg.seed),
        }

    def _producer(self, slot: Slot, chat: list[dict[str, str]], params: dict[str, Any],
                  handoff: _Handoff, max_sentences: int | None
                  ) -> Callable[[Callable[[LLMEvent], bool], threading.Event], None]:
        model = self.model_name
        n_ctx = self.config.n_ctx

        def produce(emit: Callable[[LLMEvent], bool], stop: threading.Event) -> None:
            if not handoff.claim():
                return
            try:
                llama = slot.llama
                fitted = _fit(llama, chat, n_ctx - params["max_tokens"])
                parts = llama.create_chat_completion(messages=fitted, stream=True, **params)
                prompt_tokens: int | None = None
                chunks = 0
                limit = SentenceLimit(max_sentences) if max_sentences else None
                try:
                    for part in parts:
                        if stop.is_set():
                            return
                        text = part["choices"][0]["delta"].get("content")
                        if not text:
                            continue
                        if prompt_tokens is None:
                            # The prompt is evaluated (prefix reuse included) and one token
                            # sampled but not yet evaluated: n_tokens is the prompt length.
                            prompt_tokens = llama.n_tokens
                        chunks += 1  # llama-cpp-python streams one chunk per token
                        complete = False
                        if limit is not None:
                            text, complete = limit.feed(text)
                        if text and not emit(TextDelta(text)):
                            return
                        if complete:
                            break
                finally:
                    parts.close()  # stops llama.cpp now, not when the generator is collected
                end = llama.n_tokens
                if prompt_tokens is None:
                    prompt_tokens = end
                emit(Usage(NAME, model, "input_tokens", float(prompt_tokens)))
                emit(Usage(NAME, model, "output_tokens", float(max(chunks, end - prompt_tokens))))
            finally:
                handoff.release()

        return produce


class _Handoff:
    """Who returns the context to the pool: the generation thread once it starts, or the async
    side if the request ends before the thread ever ran. Exactly one of them does."""

    def __init__(self, pool: LlamaPool, slot: Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._lock = threading.Lock()
        self._state = "pending"  # pending | claimed | released

    def claim(self) -> bool:
        with self._lock:
            if self._state != "pending":
                return False
            self._state = "claimed"
            return True

    def release(self) -> None:
        with self._lock:
            if self._state == "released":
                return
            self._state = "released"
        self._pool.release(self._slot)

    def release_unclaimed(self) -> None:
        with self._lock:
            if self._state != "pending":
                return
            self._state = "released"
        self._pool.release(self._slot)


def _fit(llama: Any, chat: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop the oldest turns after the system prompt until the prompt fits `budget` tokens
    (the engine bounds history by items, not tokens; a long call must not overflow n_ctx)."""

    def cost(m: dict[str, str]) -> int:
        return len(llama.tokenize(m["content"].encode("utf-8"), add_bos=False,
                                  special=False)) + _PER_MESSAGE_OVERHEAD

    head = chat[:1] if chat and chat[0]["role"] == "system" else []
    tail = chat[len(head):]
    costs = [cost(m) for m in tail]
    total = sum(cost(m) for m in head) + sum(costs)
    dropped = False
    while len(tail) > 1 and (total > budget or (dropped and tail[0]["role"] != "user")):
        total -= costs.pop(0)
        tail.pop(0)
        dropped = True  # then keep dropping to a user turn: templates expect one first
    if total > budget:
        raise ProviderError(NAME, f"prompt of ~{total} tokens does not fit the context "
                            f"(n_ctx minus max_tokens = {budget})")
    return head + tail
