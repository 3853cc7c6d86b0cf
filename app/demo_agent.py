"""The offline demo agent: a receptionist for a fictional dental practice.

Created on first start (`demo.create_on_start`) when the store has no agents, and by
`phonebooth agents create --demo`. It uses the embedded providers, so it answers calls with
no API key. Its id is "demo", so it can be addressed as /v1/agents/demo.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.agent_validation import check_config
from app.db.engine import Database
from app.db.models import Agent, AgentVersion
from app.db.repos import agents as agents_repo

log = logging.getLogger(__name__)

DEMO_AGENT_ID = "demo"

# SmolLM2-135M is tiny: a long prompt costs prompt-evaluation time (~5 ms a token on one
# thread) and buries the facts. Short, concrete "if asked X, say Y" lines are what it follows
# best; with this prompt and greeting it answered "what are your opening hours" with the right
# hours about three times as often as with a longer, list-style prompt (~55% vs ~19% of samples).
DEMO_PROMPT = (
    "You are the receptionist at Phonebooth Dental, on the phone with a caller. "
    "Give short, helpful answers.\n"
    "If asked when we are open, say: We are open Monday to Friday, 9 am to 5 pm.\n"
    "If asked where we are, say: We are at 12 Harbour Street.\n"
    "If the caller wants an appointment, ask for their name and a good day."
)
DEMO_GREETING = "Hello, Phonebooth Dental, how can I help you?"


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
        "stt": {"provider": "pocketsphinx"},
        # Spoken answers: two sentences at most. SmolLM2 rambles past what it is asked for
        # (often into a new paragraph), and every extra sentence is seconds of audio.
        "llm": {"provider": "llama_cpp", "max_tokens": 60, "max_sentences": 2,
                "stop": ["\n"]},
        "tts": {"provider": "piper"},
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
    async with db.transaction() as s:
        if await agents_repo.count(s) > 0:
            return False
        try:
            await create_demo_agent(s)
        except DemoAgentInvalid as exc:
            log.warning("demo agent not created: %s", exc)
            return False
    log.info("created the demo agent (id '%s')", DEMO_AGENT_ID)
    return True
