"""One live call: its agent's engine, its events, and its control by tools and the API.

`Call.run()` builds the agent's providers (with fallbacks), a VAD stream and end-of-turn
policy over the process-wide models, the tool executor, and a `Conversation` (or the agent's
speech-to-speech model, or the customer app's audio relay); then it pumps caller keypresses into
the engine until either side ends the call. Its events go to the process (`CallServices.publish`:
SQL, webhooks, WebSockets, metrics), to the call's report collector and trace, and to the
customer app. The call is also the `CallControl` of its tools and of the live-control API
(`POST /v1/sessions/{id}/say` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np

from app.agent_config import AgentConfig
from app.calls.call_providers import CallProviders
from app.calls.call_recording import CallRecording
from app.calls.call_sounds import CallSounds
from app.calls.caller_input import CallerInputs
from app.calls.clips import ClipCache, clip_key, worth_prerendering
from app.calls.customer_app.audio_relay import AudioRelay
from app.calls.customer_app.bridge import CustomerApp, close_quietly
from app.calls.customer_app.link import AppUnreachable
from app.calls.failover_budget import with_failover_budget
from app.calls.live_update import LiveAgent, stored_agent
from app.calls.recordings import RecordingStore
from app.calls.report import ReportCollector, final_report
from app.calls.runner import CallInfo
from app.calls.s2s_call import open_s2s
from app.calls.secrets import SecretResolver
from app.calls.state_store import shared_state_store
from app.calls.tracing import CallTracer
from app.calls.transport import CallTransport
from app.calls.voicemail import VoicemailScreen, wants_detection
from app.calls.warm_transfer import WarmTransfers
from app.outbox.service import is_outage
from app.state import AppState
from app.tools.control import NotOnThisCall, TransferPlan
from app.tools.errors import ToolExecutionError
from app.tools.executor import ToolSession
from app.tools.listen import CallerInput
from app.tools.mcp_tools import McpListingCache, display_url, open_mcp_tools
from pipelines import events as ev
from pipelines.conversation import Conversation
from pipelines.engine.caller_audio import ENGINE_FORMAT, ConsumerFormats
from pipelines.engine_models import EngineModels
from pipelines.outcomes import ConsultProgress, EndReason, ErrorStage, TransferPhase
from pipelines.ports import BackgroundMixingSink
from pipelines.s2s.conversation import S2SConversation

log = logging.getLogger(__name__)

# End reason of a call whose engine could not be built: nothing can speak, so it is hung up at
# once through the carrier's REST API, with a session.error saying why.
SETUP_FAILED_REASON = EndReason.SETUP_FAILED


class CallServices(Protocol):
    """What a call uses of its process: the `CallHost`."""

    state: AppState
    models: EngineModels
    secrets: SecretResolver
    # Loaded local models and pooled HTTP clients, shared by every call's adapters.
    shared: dict[str, Any]
    clips: ClipCache
    mcp_listings: McpListingCache
    signing_secret: str
    # Finished calls' recordings on their way to storage.
    storing: set[asyncio.Task[None]]

    @property
    def recordings(self) -> RecordingStore: ...

    def publish(self, event: ev.Event) -> None: ...


class Call:
    """One live call; also its `CallControl` for tools and the live-control API."""

    def __init__(self, host: CallServices, info: CallInfo, config: AgentConfig,
                 transport: CallTransport) -> None:
        self.host = host
        self.info = info
        self.transport = transport
        self.session_id = info.session_id
        self.call_uuid = info.call_uuid
        self.state: dict[str, Any] = {}
        self.report = ReportCollector()
        # A trace of the call when tracing is on (app/calls/tracing.py).
        tracing = host.state.tracing
        self.tracer = CallTracer(tracing.tracer) if tracing is not None else None
        # The caller's words and keys while a tool listens (collect_digits, collect_*).
        self.inputs = CallerInputs()
        # Outbound calls placed with voicemail detection screen the callee before greeting.
        self.screen = (VoicemailScreen(config.voicemail, self.session_id, self.emit)
                       if wants_detection(info.direction, info.metadata) else None)
        self.conversation: Conversation | S2SConversation | AudioRelay | None = None
        # The agent's customer app (websocket_url), once connected; `_app_failed` is why a call
        # whose app could not be reached (or was lost) ends after an apology.
        self.app: CustomerApp | None = None
        self._app_failed: EndReason | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Filled as each provider is built, so that a call whose setup fails part way still
        # closes what it built and ends without a post-call summary.
        self.providers = CallProviders(
            self.session_id, self.emit, resolve_secret=host.secrets,
            models_dir=str(host.state.settings.models_dir), shared=host.shared)
        # The agent as it runs now (config, LLM, TTS, tools; changed by update and handoff).
        self.agent = LiveAgent(config, self.providers, self._tool_session, self.emit)
        self._clip_key = ""
        self._clip_render: asyncio.Task[None] | None = None
        self.started = time.monotonic()
        self._ended = False
        # WAV clips and the background (play, play_background).
        self.sounds = CallSounds(transport.playout, self._conv, self.emit)
        self.warm = WarmTransfers(transport, self._conv, self.sounds, self.emit,
                                  self._agent_background, self.say)
        # The call's recording while it runs (agent `recording.enabled`).
        self.recording = CallRecording(config.recording, self.session_id, host.recordings,
                                       host.storing, self._publish)

    @property
    def config(self) -> AgentConfig:
        return self.agent.config

    # -- events ------------------------------------------------------------------------------
    def emit(self, event: ev.Event) -> None:
        event.session_id = self.session_id
        # Everything below (report, bus: SQL, webhooks, WebSockets; the customer app) sees the
        # event as masked here: the one place a card number said by the caller is removed.
        event = self.inputs.take(event)
        if self.screen is not None:
            self.screen.feed_event(event)
        self.report(event)
        if self.tracer is not None:
            self.tracer.on_event(event)
        self.host.publish(event)
        if self.app is not None:
            self.app.on_event(event)

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> str:
        info = self.info
        self.emit(ev.SessionStarted(
            call_uuid=info.call_uuid, direction=info.direction, from_number=info.from_number,
            to_number=info.to_number, agent_id=info.agent_id or "",
            agent_version=info.agent_version or 0,
        ))
        try:
            self.state.update(await shared_state_store(self.host.state).get(self.session_id))
        except LookupError:
            pass
        except Exception as exc:
            if not is_outage(exc):
                raise
            # The database is away: the call goes on with the state it is given from now on.
            log.warning("session %s: stored call state unavailable (%s); starting empty",
                        self.session_id, type(exc).__name__)
        reason: str = EndReason.ERROR
        self.recording.start(self.transport)
        try:
            if self.config.websocket_url is not None:
                await self._open_app()
            if self.config.mcp_servers and self.config.mode != "audio":
                await self._open_mcp()
            self.conversation = await self._engine()
            reason = await self._converse(self.conversation)
        except Exception as exc:
            log.exception("session %s: call failed", self.session_id)
            self.emit(ev.SessionError(code="internal", message=str(exc)[:300],
                                      stage=str(ErrorStage.HOST)))
            reason = SETUP_FAILED_REASON if self.conversation is None else EndReason.ERROR
            if not self.transport.closed:
                # Nothing can speak an apology without a working engine; end the call
                # explicitly rather than leave the caller in silence.
                with contextlib.suppress(Exception):
                    await self.transport.hangup(reason)
        finally:
            self._ended = True
            if self._clip_render is not None:
                self._clip_render.cancel()  # a call that ends first does not finish it
            await self.warm.aclose()
            await self.sounds.settle()
            if self.agent.executor is not None:
                await self.agent.executor.aclose()
            await self._finish(reason)
            self.recording.finish()
            await close_quietly(self.app)  # after session.ended, which the app is sent
            await self.providers.aclose()
        return reason

    # -- the customer app ---------------------------------------------------------------------
    async def _open_app(self) -> None:
        cfg = self.config
        headers = {name: value if isinstance(value, str) else await self.host.secrets(value)
                   for name, value in cfg.websocket_headers.items()}
        app = CustomerApp(self, cfg, session_id=self.session_id,
                          signing_secret=self.host.signing_secret, headers=headers,
                          on_lost=self._app_lost)
        started = ev.SessionStarted(
            session_id=self.session_id, call_uuid=self.info.call_uuid,
            direction=self.info.direction, from_number=self.info.from_number,
            to_number=self.info.to_number, agent_id=self.info.agent_id or "",
            agent_version=self.info.agent_version or 0)
        try:
            await app.open(started)
        except AppUnreachable as exc:
            log.warning("session %s: the agent's app cannot be reached: %s", self.session_id, exc)
            self.emit(ev.SessionError(code="app_unreachable", stage=str(ErrorStage.APP),
                                      message=f"the agent's app cannot be reached: {exc}"[:300]))
            self._app_failed = EndReason.APP_UNREACHABLE
            return
        self.app = app

    async def _open_mcp(self) -> None:
        """List the MCP servers' tools; a server that cannot be reached is left out, with a
        session.error: the call goes on without its tools."""
        info = self.info

        def unavailable(server: Any, message: str) -> None:
            self.emit(ev.SessionError(
                code="mcp_unreachable", stage=str(ErrorStage.TOOL),
                message=f"MCP server {display_url(server.url)} cannot be reached; the call "
                        f"goes on without its tools: {message}"[:300]))

        agent = (info.agent_id, info.agent_version) \
            if info.agent_id and info.agent_version else None
        self.agent.mcp = await open_mcp_tools(
            self.config.mcp_servers, taken=[t.name for t in self.config.tools],
            resolve=self.host.secrets, cache=self.host.mcp_listings, agent=agent,
            on_error=unavailable)

    def _app_lost(self) -> None:
        """The app's socket dropped and could not be reopened: apologise and end."""
        self.emit(ev.SessionError(code="app_lost", stage=str(ErrorStage.APP),
                                  message="the agent's app disconnected and could not be "
                                          "reached again"))
        self._app_failed = EndReason.APP_LOST
        if self.conversation is not None and not self._ended:
            self._apologise_and_end(self.conversation, EndReason.APP_LOST)

    def _apologise_and_end(self, conv: Conversation | S2SConversation | AudioRelay,
                           reason: EndReason) -> None:
        goodbye = self.config.failure_goodbye
        if not isinstance(conv, S2SConversation):
            conv.hangup(reason, goodbye=goodbye, interrupt=True)
            return

        async def s2s_goodbye() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conv.say(goodbye), 20)
            conv.hangup(reason)

        task = asyncio.get_running_loop().create_task(s2s_goodbye(), name="app-lost-goodbye")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def extend_response_wait(self, seconds: float) -> None:
        conv = self.conversation
        if isinstance(conv, Conversation):
            conv.extend_response_wait(seconds)

    # -- the engine ----------------------------------------------------------------------------
    async def _engine(self) -> Conversation | S2SConversation | AudioRelay:
        """The agent's s2s model when it has one and it answers; else the cascaded pipeline.
        In audio mode the customer app takes the engine's place."""
        cfg = self.config
        if self.app is not None and cfg.mode == "audio":
            self.screen = None  # the app hears the callee itself
            relay = self.app.relay = AudioRelay(
                self.transport, send=self.app.link.send, emit=self.emit,
                tts=self.providers.build("tts", cfg.tts), voice=cfg.voice,
                max_duration_s=cfg.max_call_duration_s,
                max_duration_goodbye=cfg.max_duration_goodbye)
            return relay
        if cfg.s2s is None or self._app_failed is not None:
            return self._build()
        self.agent.ensure_executor(cfg)
        # output: text: the agent's own tts block (fallbacks and all) speaks the model's text.
        tts = self.providers.build("tts", cfg.tts) if cfg.s2s.speaks_text() else None
        try:
            conv = await open_s2s(
                cfg, self.providers.context("s2s"), sink=self.transport.playout, on_event=self.emit,
                tools=self.agent.tool_specs, tool_executor=self.agent.executor,
                greeting=cfg.greeting if cfg.speaks_first else None,
                providers=self.providers.held, models=self.host.models, tts=tts)
        except Exception as exc:
            # The agent's stt/llm/tts (named, or the embedded defaults) take the call; when
            # they fail too, the cascade's own apology and failure goodbye apply.
            log.warning("session %s: s2s provider %s failed at call start: %s", self.session_id,
                        cfg.s2s.provider, exc)
            self.emit(ev.ProviderFallback(kind="s2s", from_provider=cfg.s2s.provider,
                                          to_provider="cascaded", error=str(exc)[:300]))
            return self._build()
        # Voicemail screening listens through the cascaded engine's STT; an s2s call greets.
        self.screen = None
        return conv

    def _tool_session(self, cfg: AgentConfig) -> ToolSession:
        return ToolSession(
            session_id=self.session_id, call_uuid=self.call_uuid,
            signing_secret=self.host.signing_secret, control=self,
            state_store=shared_state_store(self.host.state), settings=cfg.tool_settings,
            remote=self.app, mcp=self.agent.mcp)

    def _build(self) -> Conversation:
        cfg = with_failover_budget(self.config)
        stt = self.providers.build("stt", cfg.stt)
        llm: Any
        if cfg.mode == "text":
            # The customer app writes the answers (or, unreachable, nothing is asked of it).
            llm = self.app.llm if self.app is not None and self.app.llm is not None else \
                _NoLLM()
        else:
            llm = self.agent.llm = self.providers.build("llm", cfg.llm)
        tts = self.agent.tts = self.providers.build("tts", cfg.tts)
        self._clip_key = clip = clip_key(cfg.tts, cfg.voice, cfg.failure_goodbye)
        self.agent.ensure_executor(cfg)
        models = self.host.models
        return Conversation(
            cfg,
            prompt=cfg.prompt,
            # A screened call greets only once the callee turned out to be a person.
            greeting=cfg.greeting if cfg.speaks_first and self.screen is None
            and self._app_failed is None else None,
            vad=models.vad_stream(cfg.vad),
            endpointing=models.endpointing(cfg.turn),
            stt=stt,
            llm=llm,
            tts=tts,
            sink=self.transport.playout,
            on_event=self.emit,
            tool_executor=self.agent.executor,
            tools=self.agent.tool_specs or None,
            voice=cfg.voice,
            language=cfg.language,
            session_id=self.session_id,
            failure_clip=lambda: self.host.clips.get(clip),
            inbox=self.transport.inbox,
            caller_format=self.transport.audio_format,
            on_caller_audio=self._screen_audio if self.screen is not None else None,
            # Heard before the greeting; a screened call's greeting waits for a person, and so
            # does the notice.
            preamble=cfg.recording.consent_message
            if cfg.recording.enabled and self.screen is None else None,
        )

    async def _converse(self, conv: Conversation | S2SConversation | AudioRelay) -> str:
        await conv.start()
        rec = self.config.recording
        if isinstance(conv, AudioRelay) and rec.enabled and rec.consent_message:
            # Queued before the app can have sent any audio: the caller hears it first.
            conv.say(rec.consent_message, interruptible=False)
        if isinstance(self.transport.playout, BackgroundMixingSink):
            self._agent_background()
        if self._app_failed is not None:
            # The app never answered: the caller hears the apology, then the call ends.
            self._apologise_and_end(conv, self._app_failed)
        # Rendered while the TTS still works, for the moment it might not (the greeting's
        # request is already out, so it goes first).
        if worth_prerendering(self.agent.tts):
            self._clip_render = self.host.clips.ensure(
                self._clip_key, self.agent.tts, self.config.failure_goodbye, self.config.voice)
        pumps = [
            # The engine reads the transport's inbox itself; its closing is the caller's hangup.
            asyncio.create_task(self._pump_s2s_audio(conv) if isinstance(conv, S2SConversation)
                                else self.transport.inbox.wait_closed(),
                                name=f"audio-{self.session_id}"),
            asyncio.create_task(self._pump_dtmf(conv), name=f"dtmf-{self.session_id}"),
        ]
        if self.screen is not None and isinstance(conv, Conversation):
            cfg = self.config
            pumps.append(asyncio.create_task(
                self.screen.run(conv, self.emit, cfg.greeting if cfg.speaks_first else None),
                name=f"voicemail-{self.session_id}"))
        ended = asyncio.create_task(conv.wait_ended(), name=f"conv-{self.session_id}")
        try:
            await asyncio.wait([ended, pumps[0]], return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                # The caller hung up (frames ended): stop the engine, keep the carrier's reason.
                await conv.stop(self.transport.end_reason or EndReason.CALLER_HANGUP)
            reason = await ended
        finally:
            for t in pumps:
                t.cancel()
            for t in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if not self.transport.closed:
            # The agent ended the call (goodbye, idle, end_call, max duration): hang up through
            # the carrier's REST API, never by just closing the socket.
            with contextlib.suppress(Exception):
                await self.transport.hangup(reason)
        return self.transport.end_reason if reason == EndReason.CALLER_HANGUP and \
            self.transport.end_reason else reason

    async def _pump_s2s_audio(self, conv: S2SConversation) -> None:
        """An s2s model hears the caller at 16 kHz (it resamples to its own rate); the
        cascaded engine reads the inbox itself."""
        formats = ConsumerFormats(ENGINE_FORMAT)
        async for frame in self.transport.inbox:
            for pcm in formats.for_vad(frame):
                self._screen_audio(pcm)
                await conv.push_audio(pcm)

    def _screen_audio(self, frame: np.ndarray) -> None:
        """The engine's 16 kHz caller frames, for the voicemail screen while it listens."""
        if self.screen is not None and self.screen.listening:
            self.screen.feed_frame(frame)

    async def _pump_dtmf(self, conv: Conversation | S2SConversation | AudioRelay) -> None:
        async for d in self.transport.dtmf():
            if self.inputs.collecting:
                # A tool is collecting: the keys are its input, not a user turn.
                self.emit(ev.UserDtmf(digit=d.digit))
                self.inputs.feed_dtmf(d.digit)
            else:
                conv.on_dtmf(d.digit)

    async def _finish(self, reason: str) -> None:
        duration = time.monotonic() - self.started
        summary_llm = self.agent.llm if self.config.post_call.summary_prompt else None
        try:
            report = await final_report(
                self.report, duration_s=round(duration, 3), llm=summary_llm,
                summary_prompt=self.config.post_call.summary_prompt,
                on_usage=self.providers.context("llm").on_usage,
            )
        except Exception as exc:  # the end event must go out whatever happens
            log.warning("session %s: report failed: %s", self.session_id, exc)
            report = {}
        self.emit(ev.SessionEnded(reason=reason, duration_s=round(duration, 3), report=report))

    # -- after the call ----------------------------------------------------------------------
    def _publish(self, event: ev.Event) -> None:
        """An event after session.ended: to the bus only (webhooks, WebSockets, metrics)."""
        event.session_id = self.session_id
        self.host.publish(event)

    # -- CallControl -------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._ended

    def _conv(self) -> Conversation | S2SConversation | AudioRelay:
        if self.conversation is None:
            raise RuntimeError("the call is not running yet")
        return self.conversation

    async def say(self, text: str, *, interruptible: bool = True) -> None:
        await self._conv().say(text, interruptible=interruptible)

    async def hangup(self, reason: str) -> None:
        conv = self._conv()
        conv.hangup(reason)

    async def transfer(self, plan: TransferPlan) -> None:
        if plan.mode == "warm":
            await self.warm.run(plan)
        else:
            await self.transport.transfer(plan)
            self.emit(ev.CallTransferred(target=", ".join(plan.targets), mode="cold",
                                         phase=TransferPhase.HANDED_OFF))
        await self._conv().stop(EndReason.TRANSFERRED)

    def consult_progress(self, leg_id: str, progress: ConsultProgress, detail: str = "") -> None:
        self.warm.progress(leg_id, progress, detail)

    async def send_dtmf(self, digits: str) -> None:
        await self.transport.playout.send_dtmf(digits)
        self.emit(ev.DtmfSent(digits=digits))

    async def collect_digits(self, num_digits: int | None, timeout_s: float,
                             finish_on_key: str | None = "#") -> str:
        # The caller's speech is the digits now: it must neither barge in (which would cancel
        # this very tool) nor be answered as a turn. Keypresses go to the collector directly.
        conv = self._conv()
        if isinstance(conv, AudioRelay):
            raise NotOnThisCall("an audio-mode call's app collects its own digits")
        with conv.turns_suspended():
            return await self.inputs.collect_digits(num_digits, timeout_s, finish_on_key)

    @contextlib.asynccontextmanager
    async def listen(self, *, sensitive: bool = False) -> AsyncIterator[CallerInput]:
        # Like collect_digits: the caller's speech is the tool's input now; it must neither
        # barge in (which would cancel the tool) nor be answered as a turn.
        conv = self._conv()
        if isinstance(conv, AudioRelay):
            raise NotOnThisCall("an audio-mode call's app collects its own input")
        if sensitive and isinstance(conv, S2SConversation):
            # A speech-to-speech model hears (and may answer) every word: no card numbers.
            raise ToolExecutionError("not_available", "sensitive details cannot be collected "
                                     "on a speech-to-speech call")
        async with self.inputs.listen(sensitive=sensitive) as heard:
            with conv.turns_suspended():
                yield heard

    async def inject(self, text: str) -> None:
        conv = self._conv()
        if isinstance(conv, AudioRelay):
            raise NotOnThisCall("an audio-mode call has no LLM to inject into")
        conv.inject(text)

    # -- live reconfiguration and audio (the customer app's commands) -----------------------
    def _cascaded(self, what: str) -> Conversation:
        conv = self._conv()
        if not isinstance(conv, Conversation):
            kind = "an audio-mode" if isinstance(conv, AudioRelay) else "a speech-to-speech"
            raise NotOnThisCall(f"{what} is not supported on {kind} call")
        return conv

    def update(self, system_prompt: str | None = None, tools: list[Any] | None = None,
               llm: dict[str, Any] | None = None, new_agent: str = "", *,
               tts: dict[str, Any] | None = None, voice: str | None = None,
               turn_taking: dict[str, Any] | None = None) -> list[str]:
        """From the agent's next answer on: a new system prompt, tool set (ToolConfig-shaped
        dicts; `[]` removes every tool), LLM and/or TTS provider block, and voice; and from the
        caller's next utterance, turn-taking settings (`turn_taking`: a JSON merge patch of
        `vad`, `turn`, `interruption`, `idle`, `semantic_vad`). Everything is validated before
        anything changes (ValueError naming the field); returns the fields changed, which
        `session.updated` also reports. A new prompt with new tools or a new LLM is a handoff
        to another persona: `agent.handoff` (named `new_agent`) says so as well."""
        return self.agent.update(self._cascaded("update"), system_prompt=system_prompt,
                                 tools=tools, llm=llm, new_agent=new_agent, tts=tts, voice=voice,
                                 turn_taking=turn_taking)

    async def handoff(self, agent_id: str, summary: str = "") -> list[str]:
        """Another stored agent takes the call over from the next answer, with the conversation
        so far: its prompt, tools, LLM, TTS and voice (its greeting and turn-taking settings are
        not applied mid-call). `summary` is added as context for it. `agent.handoff` names it,
        and the call's report lists every agent that took part."""
        conv = self._cascaded("handoff")
        target, version = await stored_agent(self.host.state.db, agent_id)
        changed = self.agent.reconfigure(
            conv, prompt=target.prompt, tools=list(target.tools), llm=target.llm,
            tts=target.tts, voice=target.voice, new_agent=agent_id, handoff_version=version,
            always_handoff=True)
        if summary.strip():
            await self.inject(summary.strip())
        return changed

    async def play(self, wav_bytes: bytes, *, interruptible: bool = True) -> str:
        return await self.sounds.play(wav_bytes, interruptible=interruptible)

    def play_background(self, sound: str, volume: float = 0.5, loop: bool = True) -> None:
        self.sounds.play_background(sound, volume, loop)

    def stop_background(self) -> None:
        self.sounds.stop_background()

    def _agent_background(self) -> None:
        """The agent's own background (none: silence under the voice)."""
        bed = self.config.background
        if bed is None:
            self.sounds.stop_background()
        else:
            self.play_background(bed.sound, bed.volume, bed.loop)


class _NoLLM:
    """Text mode whose app could not be reached: the call only apologises, nothing is asked."""

    name = "none"

    async def stream(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                     settings: dict[str, Any] | None = None) -> Any:
        raise RuntimeError("the agent's app is not connected")
        yield  # an async generator
