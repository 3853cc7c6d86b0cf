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

DEMO_PROMPT = """\
You are the friendly receptionist of Phonebooth Dental, answering the phone.
Facts you can share:
- Opening hours: Monday to Friday, 9 am to 5 pm. Closed on weekends and public holidays.
- Address: 12 Harbour Street. Free parking behind the building.
- New patients are welcome; a check-up and cleaning takes about 45 minutes.
- For severe pain or swelling outside opening hours, callers should contact emergency services.
How to talk:
- You are on a phone call: answer in one or two short sentences, no lists, no markdown.
- To book, ask for the caller's name, preferred day and time (within opening hours) and a phone
  number, then repeat the details back and say the office will confirm by text message.
- If you don't know something, say so and offer to take a message.
"""


class DemoAgentInvalid(Exception):
    """The installed providers reject the demo config (e.g. a provider module is missing)."""


def demo_agent_config() -> dict[str, Any]:
    """The demo agent's config as a plain dict (validated by the caller)."""
    return {
        "name": "demo",
        "prompt": DEMO_PROMPT,
        "greeting": "Hello, thanks for calling Phonebooth Dental! How can I help you today?",
        "speaks_first": True,
        "language": "en-US",
        "stt": {"provider": "pocketsphinx"},
        "llm": {"provider": "llama_cpp"},
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
