"""llama.cpp LLM (llama-cpp-python): any GGUF chat model, Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) by
default; SmolLM2-135M-Instruct is the smaller, faster and much less faithful choice
(docs/benchmarks.md).

llama.cpp runs in worker processes, not in the server (`llama_pool`, `providers.native`): a crash
in native code costs the one generation it was running, which fails with a ProviderError at
once (the call's fallback LLM takes over, or the engine apologises), and the worker is replaced.
Tokens stream back over the worker's pipe as they are sampled; closing or cancelling the
iterator tells the worker to stop at the next token. At most `max_concurrent` generations per
model run at once in the server (one worker each); further requests wait for a free worker.
Workers load the model once and are shared by every call through `ctx.shared`. A worker keeps
its last prompt's KV cache and llama.cpp reuses the longest common prefix, so a call's later
turns evaluate only the new messages; `prefill` does the same for the first turn by evaluating
the system prompt and greeting while the greeting plays.

Small local models have no native tool support: tools are offered only when `tools_enabled`, by
describing them in the system prompt (see `prompted_tools`). Usage: `input_tokens` and
`output_tokens`, yielded as Usage events at the end of a generation. Latency: `ttfb_ms` from the
request (including any wait for a free worker) to the first token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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
from providers.llm.llama_pool import NAME, WINDOW, LlamaPool, ModelSpec, Slot, llama_pool
from providers.llm.prompted_tools import ToolReplyParser, plain_chat
from providers.usage import FirstResultClock

log = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
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
        # Set while this conversation's prefill runs (see `stream`).
        self._prefilling: asyncio.Event | None = None

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
        return llama_pool(self.ctx.shared, spec, cfg.max_concurrent)

    async def warm(self) -> None:
        """Start one worker (it loads the model) now, at startup, rather than on the first turn."""
        pool = self.pool()
        slot = await pool.acquire(self._last_slot)
        self._last_slot = slot
        pool.release(slot)

    async def prefill(self, messages: list[Message], tools: list[ToolSpec] | None = None) -> bool:
        """Evaluate the start of a conversation (system prompt, greeting) into a worker's context
        now, while nobody waits for it; the first answer then evaluates only the caller's words,
        as llama.cpp reuses the longest common token prefix of a context's last prompt. On one
        thread Qwen2.5 0.5B evaluates ~80 prompt tokens/s, so this takes ~3 s off the first turn
        (SmolLM2-135M: ~200 tokens/s, ~0.5 s).

        Returns False without doing anything when every worker is busy and no more may be
        started: a prefill never makes a generation wait. Cancelling the await gives the worker
        back at once; a generation sent to it after that waits in its pipe until the prefill
        (one prompt evaluation) is over."""
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
        job = {"messages": chat, "params": {"max_tokens": 1, "temperature": 0.0},
               "budget": cfg.n_ctx - cfg.max_tokens, "stream": False}
        done = self._prefilling = asyncio.Event()
        run = slot.worker.run(job, WINDOW)
        try:
            async for _ in run:
                pass
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(NAME, f"prefill failed: {exc}") from exc
        finally:
            await run.aclose()
            pool.release(slot)
            done.set()
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
        if self._prefilling is not None:
            # The prefill is evaluating this very prefix: waiting for the rest of it is cheaper
            # than a free worker evaluating the whole prompt again (the system prompt alone is
            # seconds of prompt evaluation for a 0.5B model on one core).
            await self._prefilling.wait()
            self._prefilling = None
        slot = await pool.acquire(self._last_slot)
        self._last_slot = slot
        parser = ToolReplyParser(offered) if offered else None
        job = {"messages": chat, "params": params, "budget": cfg.n_ctx - params["max_tokens"],
               # A JSON tool call must stay whole: no sentence limit while tools are offered.
               "max_sentences": cfg.max_sentences if not offered else None, "stream": True}
        # Closed explicitly (not left to the garbage collector) so the worker hears of a cancel
        # before the next request reaches it.
        run = slot.worker.run(job, WINDOW)
        try:
            async for msg in run:
                if msg[0] == "item":
                    text = msg[1]
                    if parser is not None:
                        text = parser.feed(text)
                        if not text:
                            continue
                    clock.mark()
                    yield TextDelta(text)
                    continue
                stats = msg[1]
                if parser is not None:
                    call = parser.finish()
                    if call is not None:
                        clock.mark()
                        yield call
                model = self.model_name
                yield Usage(NAME, model, "input_tokens", float(stats["input_tokens"]))
                yield Usage(NAME, model, "output_tokens", float(stats["output_tokens"]))
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(NAME, f"generation failed: {exc}") from exc
        finally:
            await run.aclose()
            pool.release(slot)

    def _params(self, settings: dict[str, Any]) -> dict[str, Any]:
        """create_chat_completion's sampling keywords, passed through the worker as they are."""
        cfg = self.config
        return {
            "max_tokens": int(settings.get("max_tokens", cfg.max_tokens)),
            "temperature": float(settings.get("temperature", cfg.temperature)),
            "top_p": float(settings.get("top_p", cfg.top_p)),
            "repeat_penalty": cfg.repeat_penalty,
            "stop": list(cfg.stop),
            "seed": settings.get("seed", cfg.seed),
        }
