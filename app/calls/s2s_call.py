"""Starting a call on the agent's speech-to-speech model (its `s2s` block).

`open_s2s` instantiates the adapter, opens and configures the vendor session (instructions from
the prompt, the agent's tools) and wraps it in the engine's `S2SConversation`; with
`turn_detection: phonebooth` it also gets the call's VAD stream and end-of-turn policy from the
shared engine models, built from the agent's `vad` and `turn` settings exactly as for a
cascaded call. With `output: text` the agent's TTS (built by the host from its `tts` block,
fallbacks included) speaks the model's text. A failure here is
raised to the host, which hands the call to the agent's cascaded providers (the ones it names,
or the embedded defaults): never silence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.agent_config import AgentConfig
from pipelines import events as ev
from pipelines.engine_models import EngineModels
from pipelines.ports import PlayoutSink, TTSLike
from pipelines.s2s.conversation import S2SConversation, ToolExecutor, TurnTaking
from providers.base import ProviderContext, ProviderError, ToolSpec
from providers.factory import instantiate
from providers.s2s.base import S2SConfig, S2SProvider


async def open_s2s(
    config: AgentConfig,
    ctx: ProviderContext,
    *,
    sink: PlayoutSink,
    on_event: Callable[[ev.Event], None],
    tools: list[ToolSpec],
    tool_executor: ToolExecutor | None,
    greeting: str | None,
    providers: list[Any],
    models: EngineModels | None = None,
    tts: TTSLike | None = None,
) -> S2SConversation:
    block = config.s2s
    assert block is not None
    provider = instantiate("s2s", block.provider, block.options(), ctx)
    if not isinstance(provider, S2SProvider):
        raise ProviderError(block.provider, "not a speech-to-speech provider", retryable=False)
    providers.append(provider)
    turn_taking: TurnTaking | None = None
    options = provider.config
    speaks_text = isinstance(options, S2SConfig) and options.output == "text"
    if speaks_text and tts is None:
        raise ProviderError(block.provider, "output text needs the agent's tts",
                            retryable=False)
    if isinstance(options, S2SConfig) and options.turn_detection == "phonebooth":
        if models is None:
            raise ProviderError(block.provider, "turn_detection phonebooth needs the engine's "
                                "VAD and turn models", retryable=False)
        turn_taking = TurnTaking(vad=models.vad_stream(config.vad),
                                 endpointing=models.endpointing(config.turn))
    try:
        session = await provider.connect(config.prompt, tools)
    except BaseException:
        if turn_taking is not None:
            await turn_taking.vad.aclose()
        raise
    return S2SConversation(
        session, input_rate=provider.input_rate, output_rate=provider.output_rate, sink=sink,
        on_event=on_event, tool_executor=tool_executor, greeting=greeting,
        provider=block.provider, turn_taking=turn_taking,
        tts=tts if speaks_text else None, voice=config.voice)
