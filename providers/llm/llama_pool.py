"""llama.cpp's worker pools: one supervised pool of worker processes per GGUF model and context
settings, shared by every call (the pool itself is `providers.native.pool`).

Each worker owns one llama.cpp context (KV cache) and runs one generation at a time; the weights
are memory-mapped, so extra workers share the model's pages and cost their KV cache and an
interpreter. A call asks for the worker it used last: llama.cpp then reuses the common prompt
prefix (system prompt and history) instead of evaluating it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.native.pool import (
    CRASH_LOOP,
    NativePool,
    Slot,
    backoff_s,
    close_pools,
    pool_for,
    pools_problem,
)
from providers.native.process import WorkerSpec

NAME = "llama_cpp"
# Tokens the worker may run ahead of the consumer: a stalled consumer must not let it generate
# a whole answer nobody reads.
WINDOW = 16
# A build for another CPU dies this way on its first inference.
_CRASH_HINT = ("; a llama.cpp built for another CPU crashes this way (reinstall "
               "llama-cpp-python with CMAKE_ARGS=-DGGML_NATIVE=OFF, see the README)")

LlamaPool = NativePool

__all__ = ["CRASH_LOOP", "NAME", "WINDOW", "LlamaPool", "ModelSpec", "Slot", "backoff_s",
           "close_pools", "llama_pool", "pools_problem"]


@dataclass(frozen=True)
class ModelSpec:
    path: str
    n_ctx: int
    n_threads: int
    n_batch: int
    # Further llama.cpp constructor arguments (e.g. ("chat_format", "gemma")), passed through.
    options: tuple[tuple[str, Any], ...] = ()

    def llama_kwargs(self) -> dict[str, Any]:
        return {"model_path": self.path, "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                "n_threads_batch": self.n_threads, "n_batch": self.n_batch, "use_mmap": True,
                **dict(self.options)}

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec(provider=NAME, label="llama.cpp", module="providers.llm.llama_worker",
                          model_path=self.path, options=tuple(self.llama_kwargs().items()),
                          crash_hint=_CRASH_HINT)


def llama_pool(shared: dict[str, Any], spec: ModelSpec, capacity: int) -> NativePool:
    """The process's pool of workers for this model and context settings."""
    return pool_for(shared, spec.worker_spec(), capacity)
