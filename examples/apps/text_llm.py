"""Text mode (bring your own LLM): answer each `llm.request` with streamed tokens.

    python examples/apps/text_llm.py --port 9000 --secret whsec_...
    python examples/apps/text_llm.py --port 9000 --secret whsec_... \\
        --openai-url http://localhost:11434/v1 --model llama3.2   # any OpenAI-compatible server

Point an agent at it: `websocket_url: ws://HOST:9000/` and `mode: text` (Phonebooth keeps the
speech-to-text, turn-taking and text-to-speech; the words come from here). Without
`--openai-url` a tiny rule-based responder answers. Streaming stops on `llm.cancelled`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app.voiceapp import Event, Session, VoiceApp

RULES = [
    (("hour", "open", "close"), "We are open nine to five, Monday to Friday."),
    (("price", "cost", "much"), "The basic plan is ten dollars a month."),
    (("bye", "thank"), "Thanks for calling. Goodbye!"),
]


async def rule_based(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
    """The last user message, answered by keyword, a word at a time."""
    said = next((str(m.get("content") or "") for m in reversed(messages)
                 if m.get("role") == "user"), "").lower()
    answer = next((reply for words, reply in RULES if any(w in said for w in words)),
                  f"You said: {said}. How can I help?" if said else "Hello! How can I help?")
    for word in answer.split(" "):
        await asyncio.sleep(0.02)
        yield word + " "


async def openai_stream(client: httpx.AsyncClient, url: str, model: str, api_key: str | None,
                        messages: list[dict[str, Any]]) -> AsyncIterator[str]:
    """Tokens from an OpenAI-compatible `/chat/completions` endpoint (server-sent events)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": messages, "stream": True}
    async with client.stream("POST", url.rstrip("/") + "/chat/completions", json=body,
                             headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            data = line.removeprefix("data:").strip()
            if not line.startswith("data:") or not data or data == "[DONE]":
                continue
            choices = json.loads(data).get("choices") or [{}]
            token = (choices[0].get("delta") or {}).get("content")
            if token:
                yield token


def build_app(secret: str | None = None, *, openai_url: str | None = None,
              model: str = "gpt-4o-mini", api_key: str | None = None) -> VoiceApp:
    app = VoiceApp(signing_secret=secret)

    @app.on("llm.request")
    async def answer(session: Session, event: Event) -> None:
        request_id = event["request_id"]
        messages = list(event.get("messages") or [])
        if openai_url:
            async with httpx.AsyncClient(timeout=30) as client:
                await stream(session, request_id,
                             openai_stream(client, openai_url, model, api_key, messages))
        else:
            await stream(session, request_id, rule_based(messages))

    async def stream(session: Session, request_id: str, tokens: AsyncIterator[str]) -> None:
        try:
            async for token in tokens:
                if session.cancelled(request_id):
                    return  # the caller barged in: nobody hears the rest
                session.send_text(token, request_id=request_id)
        except httpx.HTTPError as exc:
            logging.warning("LLM failed: %s", exc)
            session.send_text("Sorry, I could not think of an answer.", request_id=request_id)
        session.send_text("", last=True, request_id=request_id)

    @app.on("llm.cancelled")
    def cancelled(session: Session, event: Event) -> None:
        logging.info("request %s cancelled: %s", event.get("request_id"), event.get("reason"))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="Phonebooth's signing secret (whsec_...)")
    parser.add_argument("--openai-url", help="an OpenAI-compatible base URL (…/v1)")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    build_app(args.secret, openai_url=args.openai_url, model=args.model,
              api_key=os.environ.get("OPENAI_API_KEY")).run(args.host, args.port)


if __name__ == "__main__":
    main()
