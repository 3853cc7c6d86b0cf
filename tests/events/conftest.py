"""Fixtures for event tests: sessions in a real database and a realistic call's event sequence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.config import EventsSettings
from app.db.engine import Database
from app.db.models import Agent, AgentVersion, Session
from app.events.service import EventsService
from pipelines import events as ev

SIGNING_SECRET = "whsec_test_0123456789"


async def make_session(
    db: Database,
    *,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
    status: str = "ringing",
) -> tuple[str, str]:
    """An agent (with a pinned version) and a session of it; returns (session_id, agent_id)."""
    config: dict[str, Any] = {"name": "events test", "prompt": "be brief"}
    if webhook_url:
        config["webhook_url"] = webhook_url
    if webhook_events:
        config["webhook_events"] = webhook_events
    async with db.transaction() as s:
        agent = Agent(name="events test")
        s.add(agent)
        await s.flush()
        s.add(AgentVersion(agent_id=agent.id, version=1, config=config))
        row = Session(agent_id=agent.id, agent_version=1, status=status,
                      call_uuid="call-uuid-1", from_number="+14155550100",
                      to_number="+14155550199")
        s.add(row)
        await s.flush()
        return row.id, agent.id


def call_events(sid: str, agent_id: str = "") -> list[ev.Event]:
    """What a short call with one tool turn and one barge-in emits, in order."""
    return [
        ev.SessionStarted(session_id=sid, call_uuid="call-uuid-1", direction="inbound",
                          from_number="+14155550100", to_number="+14155550199",
                          agent_id=agent_id, agent_version=1),
        ev.AgentSpeechStarted(session_id=sid, segment_id="s0", text="Hello!"),
        ev.AgentSpeechCompleted(session_id=sid, segment_id="s0", text="Hello!"),
        ev.TurnCompleted(session_id=sid, turn_id="t0", agent_text="Hello!", heard_text="Hello!"),
        ev.UserSpeechStarted(session_id=sid),
        ev.UserSpeechStopped(session_id=sid, speech_ms=900),
        ev.UserTranscription(session_id=sid, text="what's the weather", is_final=True),
        ev.UserTurnCompleted(session_id=sid, turn_id="t1", text="what's the weather",
                             trigger="model", eou_probability=0.93),
        ev.ToolCalled(session_id=sid, call_id="call_0", name="weather",
                      arguments={"city": "Paris"}),
        ev.ToolCompleted(session_id=sid, call_id="call_0", name="weather",
                         result={"temp_c": 21}, latency_ms=120.5),
        ev.SessionUsage(session_id=sid, provider="llama_cpp", model="smollm2", kind="llm",
                        metric="input_tokens", quantity=150),
        ev.TurnMetrics(session_id=sid, turn_id="t1", vad_stop_to_eou_ms=110,
                       eou_to_stt_final_ms=40, llm_ttft_ms=380, tts_ttfb_ms=60,
                       first_audio_out_ms=640, played_ack_ms=700, server_added_ms=45),
        ev.AgentSpeechStarted(session_id=sid, segment_id="s1", text="It is 21 degrees."),
        ev.UserSpeechStarted(session_id=sid),
        ev.AgentSpeechInterrupted(session_id=sid, segment_id="s1", heard_text="It is 21",
                                  interrupted_text="It is 21 degrees.", barge_in_ms=180),
        ev.TurnCompleted(session_id=sid, turn_id="t1", user_text="what's the weather",
                         agent_text="It is 21 degrees.", heard_text="It is 21",
                         interrupted=True),
        ev.UserTurnCompleted(session_id=sid, turn_id="t2", text="thanks bye", trigger="model"),
        ev.TurnMetrics(session_id=sid, turn_id="t2", llm_ttft_ms=300, first_audio_out_ms=600),
        ev.TurnCompleted(session_id=sid, turn_id="t2", user_text="thanks bye",
                         agent_text="Goodbye!", heard_text="Goodbye!"),
        ev.SessionUsage(session_id=sid, provider="llama_cpp", model="smollm2", kind="llm",
                        metric="input_tokens", quantity=210),
        ev.SessionUsage(session_id=sid, provider="piper", model="joe", kind="tts",
                        metric="characters", quantity=42),
        ev.SessionEnded(session_id=sid, reason="caller_hangup", duration_s=12.5,
                        report={"turns": 5}),
    ]


@pytest.fixture
async def events_factory(database: Database) -> AsyncIterator[Callable[..., EventsService]]:
    """EventsService instances on the test database with fast retries (stopped at teardown)."""
    made: list[EventsService] = []

    def make(**overrides: Any) -> EventsService:
        settings = EventsSettings(**{"webhook_backoff_s": 0.05, "webhook_timeout_s": 2.0,
                                     "webhook_max_attempts": 4, **overrides})
        svc = EventsService(settings, database.sessionmaker, SIGNING_SECRET,
                            poll_interval_s=0.1)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        await svc.stop()


@pytest.fixture
async def events(events_factory: Callable[..., EventsService]) -> EventsService:
    svc = events_factory()
    await svc.start()
    return svc
