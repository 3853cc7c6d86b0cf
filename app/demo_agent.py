"""The offline demo agent: a receptionist for a fictional dental practice.

Created on first start (`demo.create_on_start`) when the store has no agents, and by
`phonebooth agents create --demo`. It uses the embedded providers, so it answers calls with
no API key. Its id is "demo", so it can be addressed as /v1/agents/demo.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.agent_validation import check_config
from app.db.engine import Database
from app.db.models import Agent, AgentVersion
from app.db.repos import agents as agents_repo

log = logging.getLogger(__name__)

DEMO_AGENT_ID = "demo"

# Written for Qwen2.5-Coder-0.5B-Instruct, the default local LLM. A small model answers most
# faithfully when the prompt holds the answers themselves: one question/answer pair per fact,
# which it rephrases to fit the caller's words ("Where is the practice?" -> "The practice is at 12
# Harbour Street."). The facts it gets wrong from a description are spelt out as pairs of their
# own: closing time, weekends (a bare "open Monday to Friday" still got "Yes, we are open on
# Saturday") and booking (it sent callers to the phone number instead of taking the booking).
# On the 20 questions of bench/local_quality.py this answers 19 with the right fact; a fact
# sheet with rules got 13-17 (docs/benchmarks.md).
DEMO_PROMPT = (
    "You are the receptionist at Phonebooth Dental, on a phone call. Answer with the matching "
    "answer below, in one or two short sentences. If none fits, say you do not know and offer "
    "to take a message.\n"
    "Q: When are you open? A: We are open Monday to Friday, 9 am to 5 pm, and closed at "
    "weekends.\n"
    "Q: When do you close? A: We close at 5 pm.\n"
    "Q: Are you open at the weekend? A: No, we are closed on Saturday and Sunday.\n"
    "Q: Where are you? A: We are at 12 Harbour Street.\n"
    "Q: How much is a check-up? A: A check-up is 60 dollars.\n"
    "Q: How much is a cleaning? A: A cleaning is 80 dollars.\n"
    "Q: How much is a filling? A: A filling is 120 dollars.\n"
    "Q: What is your phone number? A: It is 555 0123.\n"
    "Q: Do you take new patients? A: Yes, new patients are welcome.\n"
    "Q: Can I book an appointment? A: Of course. What is your name, and which day suits you?"
)
DEMO_GREETING = "Hello, Phonebooth Dental, how can I help you?"
DEMO_STT_PROMPT = (f"{DEMO_GREETING} Opening hours, address, prices, check-up, cleaning, "
                   "filling, appointment.")


class DemoAgentInvalid(Exception):
    """The installed providers reject the demo config (e.g. a provider module is missing)."""


def demo_agent_config() -> dict[str, Any]:
    """The demo agent's config as a plain dict (validated by the caller)."""
    return {
        "name": "demo",
        "prompt": DEMO_PROMPT,
        "greeting": DEMO_GREETING,
        "speaks_first": True,
        "language": "en-US",
        # Whisper tiny.en with five beams and, as the text before the caller's words, the
        # greeting and what callers ask about: 31 % word errors on the telephone-speech set
        # against 38 % greedy without it, for ~15 % more CPU (docs/benchmarks.md).
        "stt": {"provider": "whisper", "beam_size": 5, "prompt": DEMO_STT_PROMPT},
        # Spoken answers: two sentences at most (every extra sentence is seconds of audio), one
        # paragraph. Greedy decoding: the most faithful to the facts; a repeat penalty pushes
        # the model away from the very numbers it should repeat.
        "llm": {"provider": "llama_cpp", "max_tokens": 60,
                "max_sentences": 2, "stop": ["\n"], "temperature": 0.0,
                "repeat_penalty": 1.0},
        "tts": {"provider": "piper"},
        # An answer from a worker that has not read the prompt yet (the call's first, or the
        # first after a worker was replaced) waits for it: ~300 tokens, ~12 s on a slow CPU
        # (~25 tokens/s on one thread; ~4 s at the ~80 of a common one). Apologising at the
        # default 6 s would throw that work away and make the caller ask again.
        "response_timeout_s": 20.0,
        "metadata": {"demo": True},
    }


async def create_demo_agent(s: AsyncSession) -> tuple[Agent, AgentVersion]:
    """Insert the demo agent (id "demo"). Raises DemoAgentInvalid if the installed providers
    reject its config, and LookupError if an agent with that id already exists."""
    config, problems = check_config(demo_agent_config())
    if problems or config is None:
        raise DemoAgentInvalid("; ".join(f"{p.field}: {p.message}" for p in problems))
    if await agents_repo.get(s, DEMO_AGENT_ID, include_deleted=True) is not None:
        raise LookupError(f"an agent with id '{DEMO_AGENT_ID}' already exists")
    return await agents_repo.create(s, config.model_dump(mode="json"), agent_id=DEMO_AGENT_ID)


async def ensure_demo_agent(db: Database) -> bool:
    """Create the demo agent when the store has no agents at all (first start). Never fails the
    start-up: an unusable demo config is logged and skipped."""
    try:
        async with db.transaction() as s:
            if await agents_repo.count(s) > 0:
                return False
            try:
                await create_demo_agent(s)
            except DemoAgentInvalid as exc:
                log.warning("demo agent not created: %s", exc)
                return False
    except (IntegrityError, LookupError):
        # Replicas starting together on a fresh database: another one created it first (seen
        # as the id taken, or as the insert colliding).
        return False
    log.info("created the demo agent (id '%s')", DEMO_AGENT_ID)
    return True
