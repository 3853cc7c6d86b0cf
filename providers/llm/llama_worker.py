"""The llama.cpp worker process: one model context, driven over a pipe by the server
(`python -m providers.llm.llama_worker FD`; the protocol is `providers.native.worker`'s).

The server passes llama.cpp's own arguments through, so a new model, chat format or sampling
option needs no change here. The load options are llama.cpp's constructor keywords; a job holds
`messages` (chat turns), `params` (create_chat_completion keywords: max_tokens, temperature,
...), `budget` (prompt tokens allowed), `max_sentences` (None: no limit) and `stream` (False:
evaluate the prompt and one token only, a prefill). Each item is a piece of text (one token);
the stats count tokens and the prompt tokens evaluated. Between two tokens the worker looks for
a cancel, so a barge-in stops generation after at most one more token.
"""

from __future__ import annotations

import sys
from typing import Any

from providers.llm.sentence_limit import SentenceLimit
from providers.native.worker import Job, JobError, main

# Tokens kept free for the template's own markup around each message when fitting the context.
PER_MESSAGE_OVERHEAD = 8


def fit(llama: Any, chat: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop the oldest turns after the system prompt until the prompt fits `budget` tokens
    (the engine bounds history by items, not tokens; a long call must not overflow n_ctx)."""

    def cost(m: dict[str, str]) -> int:
        return len(llama.tokenize(m["content"].encode("utf-8"), add_bos=False,
                                  special=False)) + PER_MESSAGE_OVERHEAD

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
        raise JobError(f"prompt of ~{total} tokens does not fit the context "
                       f"(n_ctx minus max_tokens = {budget})", retryable=False)
    return head + tail


class LlamaEngine:
    def __init__(self) -> None:
        self.llama: Any = None
        self.evaluated: list[int] = []  # tokens per llama.eval call of the running job

    def load(self, options: dict[str, Any]) -> dict[str, Any]:
        from llama_cpp import Llama

        self.llama = Llama(**options, verbose=False)
        real_eval = self.llama.eval

        def counting_eval(tokens: Any) -> None:
            self.evaluated.append(len(tokens))
            real_eval(tokens)

        # The first eval of a job is its prompt minus the prefix llama.cpp kept from the last
        # one: reported so the prompt cache can be observed from outside.
        self.llama.eval = counting_eval
        return {"n_ctx": self.llama.n_ctx()}

    def run(self, job: Job) -> dict[str, Any]:
        self.evaluated = []
        return self.generate(job)

    def generate(self, running: Job) -> dict[str, Any]:
        llama = self.llama
        job = running.data
        params: dict[str, Any] = dict(job["params"])
        fitted = fit(llama, job["messages"], int(job["budget"]))
        if not job.get("stream", True):
            llama.create_chat_completion(messages=fitted, **params)
            return self.stats(llama.n_tokens, 0, cancelled=False)
        parts = llama.create_chat_completion(messages=fitted, stream=True, **params)
        max_sentences = job.get("max_sentences")
        limit = SentenceLimit(int(max_sentences)) if max_sentences else None
        prompt_tokens: int | None = None
        chunks = 0
        cancelled = False
        try:
            for part in parts:
                if running.cancelled():
                    cancelled = True
                    break
                text = part["choices"][0]["delta"].get("content")
                if not text:
                    continue
                if prompt_tokens is None:
                    # The prompt is evaluated (prefix reuse included) and one token sampled but
                    # not yet evaluated: n_tokens is the prompt length.
                    prompt_tokens = llama.n_tokens
                chunks += 1  # llama-cpp-python streams one chunk per token
                complete = False
                if limit is not None:
                    text, complete = limit.feed(text)
                if text and not running.emit(text):
                    cancelled = True
                    break
                if complete:
                    break
        finally:
            parts.close()  # stops llama.cpp now, not when the generator is collected
        end = llama.n_tokens
        if prompt_tokens is None:
            prompt_tokens = end
        return self.stats(prompt_tokens, max(chunks, end - prompt_tokens), cancelled=cancelled)

    def stats(self, prompt_tokens: int, output_tokens: int, *, cancelled: bool) -> dict[str, Any]:
        return {"input_tokens": prompt_tokens, "output_tokens": output_tokens,
                "n_tokens": self.llama.n_tokens,
                "prompt_evaluated": self.evaluated[0] if self.evaluated else 0,
                "cancelled": cancelled}


if __name__ == "__main__":
    sys.exit(main(sys.argv, LlamaEngine()))
