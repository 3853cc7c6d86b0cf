"""An STT connection lost mid-utterance: the utterance reaches the vendor again exactly once.

Deepgram behind the STT recovery layer with a fallback, fed a μ-law call's own bytes: the layer
reopens Deepgram and replays what is not final yet from its one buffer (the adapter keeps no
copy); it does not switch to the fallback, which a reopened stream makes unnecessary.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from pipelines.audio.g711 import ulaw_encode
from pipelines.audio.inbox import AudioFormat
from providers.fallback import Cooldowns
from providers.stt.deepgram import DeepgramSTT
from providers.stt_recovery import RecoveringSTT
from tests.fakes.fake_deepgram import FakeDeepgram
from tests.fakes.vendor_base import Failure, tone
from tests.providers.cloud_helpers import adapter, vendor_fixtures
from tests.providers.test_deepgram import next_final

server, fake = vendor_fixtures(FakeDeepgram, idle_timeout_s=10.0)
MULAW_8K = AudioFormat(8000, "mulaw")


async def test_reconnect_replays_the_utterance_once(fake: FakeDeepgram, cx: Any) -> None:
    ctx, _ = cx
    fake.queue_transcript("book a table for four")
    fake.fail_next("listen", Failure("drop", after=25))  # cut 0.5 s into the utterance
    primary = adapter(DeepgramSTT, fake.ws_base_url, ctx)
    spare = adapter(DeepgramSTT, fake.ws_base_url, ctx, model="nova-2")
    chain = RecoveringSTT([(primary, 5.0), (spare, 5.0)], cooldowns=Cooldowns())
    assert chain.input_format(MULAW_8K) == MULAW_8K
    s = await chain.open_as(MULAW_8K, "en-US")
    events = s.events()
    sent = bytearray()
    audio = ulaw_encode(tone(int(1.4 * 8000), 8000))
    for i in range(0, len(audio), 160):
        frame = audio[i:i + 160]
        sent += frame
        await s.push(np.frombuffer(frame, np.uint8))
        if i == 50 * 160:  # 1 s in: let the drop and the reconnect happen
            await fake.until(lambda: len(fake.for_endpoint("listen")) == 2)
        await asyncio.sleep(0)
    await s.flush()
    final, _ = await next_final(events)
    assert final.text == "book a table for four"
    first, second = fake.for_endpoint("listen")  # no third: the chain did not switch
    assert second.q("model") == first.q("model") == "nova-3"
    # The new connection got the utterance from its first byte, once, then the rest.
    assert bytes(second.audio) == bytes(sent)
    assert bytes(first.audio) == bytes(sent[: len(first.audio)])
    await s.aclose()
