from __future__ import annotations
import asyncio
from tests.e2e.tools_fixtures import call_stack, Recorder, types

async def test_smoke(settings_factory, monkeypatch):
    async with call_stack(settings_factory, monkeypatch) as stack:
        await stack.add_agent()
        rec = Recorder(stack)
        stack.deepgram.queue_transcript("What are your opening hours?")
        stack.openai.queue_chat("We open at nine.")
        async with stack.call() as call:
            sid = await stack.session_id(call)
            await rec.wait_type("agent.speech_completed", sid=sid)
            await stack.say(call, "What are your opening hours?", trail_ms=300)
            await rec.wait_type("turn.completed", n=1, sid=sid, within_s=30)
            await asyncio.sleep(0.5)
        await rec.wait_type("session.ended", sid=sid)
        for e in rec.session(sid):
            print(e.seq, e.type, e.event.payload() if e.type not in ("session.ended",) else e.event.reason)
