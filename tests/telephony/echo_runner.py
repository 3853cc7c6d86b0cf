"""The edge-test runner: echoes the caller's audio back, says nothing of its own.

Edge tests install it as `app.state.pb.calls` so the Plivo stream, the codec path and paced
playout are checked end to end without any model: whatever the caller says comes back about a
second later.

Keypad: `*` clears what is queued (the barge-in path: `clearAudio` → `clearedAudio`), `#` hangs
up through the carrier's REST API, any other digit is sent back as DTMF (`sendDTMF`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.calls.runner import CallInfo
from app.calls.transport import CallTransport

log = logging.getLogger(__name__)

SEGMENT_FRAMES = 50  # checkpoint once a second so played acks are exercised


class GreetingEchoRunner:
    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        keys = asyncio.create_task(self._keys(info, transport), name="echo-dtmf")
        try:
            reason = await self._echo(transport)
        finally:
            keys.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keys
        if keys.done() and not keys.cancelled():
            if keys.exception() is None:
                reason = keys.result() or reason
            else:
                log.warning("session %s: keypad handling failed: %s", info.session_id,
                            keys.exception())
        return transport.end_reason or reason

    async def _echo(self, transport: CallTransport) -> str:
        playout = transport.playout
        n = 0
        segment = 0
        async for caller in transport.inbox:
            frame = caller.pcm
            if n % SEGMENT_FRAMES == 0:
                if n:
                    await playout.end_segment()
                segment += 1
                await playout.start_segment(f"echo-{segment}")
            await playout.write(frame, caller.rate)
            n += 1
        if n:
            await playout.end_segment()
        return "caller_hangup"

    async def _keys(self, info: CallInfo, transport: CallTransport) -> str | None:
        async for ev in transport.dtmf():
            if ev.digit == "#":
                log.info("session %s: '#' pressed, hanging up", info.session_id)
                await transport.hangup("dtmf_hangup")
                return "dtmf_hangup"
            if ev.digit == "*":
                heard = await transport.playout.clear()
                log.info("session %s: '*' pressed, cleared playout (%.0f ms heard)",
                         info.session_id, heard)
            else:
                await transport.playout.send_dtmf(ev.digit)
        return None
