"""The call host: runs one agent conversation per Plivo stream.

`CallHost.run(info, transport)` is the edge's `CallRunner`. For each call it builds the agent's
providers (with fallbacks), a VAD stream and end-of-turn policy over the process-wide models, the
tool executor, and a `Conversation`; then it pumps caller audio and keypresses into the engine
until either side ends the call. Events go to the bus (SQL, webhooks, WebSockets), to the
metrics, and to the call's report collector. The host also registers each live call for the
control API (`POST /v1/sessions/{id}/say` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from app import metrics
from app.agent_config import AgentConfig, ProviderBlock, ToolConfig
from app.calls.call_providers import CallProviders
from app.calls.call_recording import CallRecording
from app.calls.call_sounds import CallSounds
from app.calls.caller_input import CallerInputs
from app.calls.clips import ClipCache, clip_key, worth_prerendering
from app.calls.customer_app.audio_relay import AudioRelay
from app.calls.customer_app.bridge import CustomerApp, close_quietly
from app.calls.customer_app.link import AppUnreachable
from app.calls.failover_budget import with_failover_budget
from app.calls.live_update import parse_provider_block, parse_tools, retune, stored_agent
from app.calls.recordings import RecordingStore
from app.calls.registry import LiveCalls
from app.calls.report import ReportCollector, final_report
from app.calls.runner import CallInfo
from app.calls.s2s_call import open_s2s
from app.calls.secrets import SecretResolver
from app.calls.state_store import shared_state_store
from app.calls.tracing import CallTracer
from app.calls.transport import CallTransport
from app.calls.voicemail import VoicemailScreen, wants_detection
from app.calls.warm_transfer import WarmTransfers
from app.db.repos import agents as agents_repo
from app.events.signing import signing_secret_from_box
from app.outbox.service import is_outage
from app.state import AppState
from app.tools.control import NotOnThisCall, TransferPlan
from app.tools.errors import ToolExecutionError
from app.tools.executor import ToolExecutor, ToolSession
from app.tools.listen import CallerInput
from app.tools.mcp_tools import McpListingCache, McpToolbox, display_url, open_mcp_tools
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


class CallHost:
    """Process-wide: shared models and provider state; one `run` per call."""

    def __init__(self, state: AppState, models: EngineModels) -> None:
        self.state = state
        self.models = models
        self.live = LiveCalls()
        self.secrets = SecretResolver(state.db, state.crypto)
        # Loaded local models and pooled HTTP clients, shared by every call's adapters.
        self.shared: dict[str, Any] = {}
        # Lines pre-rendered by each agent's TTS for when that TTS is down (app/calls/clips.py).
        self.clips = ClipCache()
        # The tools each agent version's MCP servers list, for later calls of that version.
        self.mcp_listings = McpListingCache()
        self._signing_secret = signing_secret_from_box(state.crypto)
        # Finished calls' recordings on their way to storage (awaited at shutdown).
        self.storing: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self.live)

    @property
    def recordings(self) -> RecordingStore:
        store = self.state.recordings
        if store is None:  # a host built without the lifecycle component (tests, tools)
            store = self.state.recordings = RecordingStore(self.state.settings.recordings)
        assert isinstance(store, RecordingStore)
        return store

    async def wait_stored(self, timeout_s: float = 30.0) -> None:
        """Let recordings being stored finish (at shutdown)."""
        if self.storing:
            await asyncio.wait(set(self.storing), timeout=timeout_s)

    async def run(self, info: CallInfo, transport: CallTransport) -> str:
        call = _Call(self, info, await self._agent_config(info), transport)
        self.live.register(info.session_id, call)
        metrics.ACTIVE_CALLS.inc()
        try:
            return await call.run()
        finally:
            metrics.ACTIVE_CALLS.dec()
            self.live.unregister(info.session_id, call)
            if call.tracer is not None:
                call.tracer.close()  # after session.ended this does nothing

    async def _agent_config(self, info: CallInfo) -> AgentConfig:
        """The call's agent, validated here once: the config the answer URL handed over in this
        process, else the session's agent version read from the database."""
        raw = info.agent_config
        if raw is None:
            raw = {}
            if info.agent_id and info.agent_version:
                async with self.state.db.session() as s:
                    v = await agents_repo.get_version(s, info.agent_id, info.agent_version)
                raw = dict(v.config) if v is not None else {}
        if self.state.events is not None:
            # Events of a call whose agent has no webhook need not wait for a lookup.
            self.state.events.targets.register(info.session_id, raw.get("webhook_url") or None,
                                               raw.get("webhook_events") or ())
        return AgentConfig.model_validate(raw)

    def publish(self, event: ev.Event) -> None:
        metrics.observe_event(event)
        if self.state.events is not None:
            self.state.events.publish(event)


class _Call:
    """One live call; also its `CallControl` for tools and the live-control API."""

    def __init__(self, host: CallHost, info: CallInfo, config: AgentConfig,
                 transport: CallTransport) -> None:
        self.host = host
        self.info = info
        self.transport = transport
        self.session_id = info.session_id
        self.call_uuid = info.call_uuid
        self.state: dict[str, Any] = {}
        self.config = config
        self.report = ReportCollector()
        # A trace of the call when tracing is on (app/calls/tracing.py).
        tracing = host.state.tracing
        self.tracer = CallTracer(tracing.tracer) if tracing is not None else None
        # The caller's words and keys while a tool listens (collect_digits, collect_*).
        self.inputs = CallerInputs()
        # Outbound calls placed with voicemail detection screen the callee before greeting.
        self.screen = (VoicemailScreen(self.config.voicemail, self.session_id, self.emit)
                       if wants_detection(info.direction, info.metadata) else None)
        self.conversation: Conversation | S2SConversation | AudioRelay | None = None
        # The agent's customer app (websocket_url), once connected; `_app_failed` is why a call
        # whose app could not be reached (or was lost) ends after an apology.
        self.app: CustomerApp | None = None
        self._app_failed: EndReason | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.executor: ToolExecutor | None = None
        # The tools of the agent's MCP servers, listed at call start.
        self.mcp: McpToolbox | None = None
        # Filled as each provider is built, so that a call whose setup fails part way still
        # closes what it built and ends without a post-call summary.
        self.providers = CallProviders(
            self.session_id, self.emit, resolve_secret=host.secrets,
            models_dir=str(host.state.settings.models_dir), shared=host.shared)
        self._llm: Any = None
        self._tts: Any = None
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
            if self.executor is not None:
                await self.executor.aclose()
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
                          signing_secret=self.host._signing_secret, headers=headers,
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
        self.mcp = await open_mcp_tools(
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
        self._tool_executor(cfg)
        # output: text: the agent's own tts block (fallbacks and all) speaks the model's text.
        tts = self.providers.build("tts", cfg.tts) if cfg.s2s.speaks_text() else None
        try:
            conv = await open_s2s(
                cfg, self.providers.context("s2s"), sink=self.transport.playout, on_event=self.emit,
                tools=self.executor.specs if self.executor else [],
                tool_executor=self.executor, greeting=cfg.greeting if cfg.speaks_first else None,
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

    def _tool_executor(self, cfg: AgentConfig) -> None:
        if (cfg.tools or self.mcp) and self.executor is None:
            self.executor = ToolExecutor(
                cfg.tools,
                ToolSession(
                    session_id=self.session_id,
                    call_uuid=self.call_uuid,
                    signing_secret=self.host._signing_secret,
                    control=self,
                    state_store=shared_state_store(self.host.state),
                    settings=cfg.tool_settings,
                    remote=self.app,
                    mcp=self.mcp,
                ),
                self.emit,
            )

    def _build(self) -> Conversation:
        cfg = with_failover_budget(self.config)
        stt = self.providers.build("stt", cfg.stt)
        llm: Any
        if cfg.mode == "text":
            # The customer app writes the answers (or, unreachable, nothing is asked of it).
            llm = self.app.llm if self.app is not None and self.app.llm is not None else \
                _NoLLM()
        else:
            llm = self._llm = self.providers.build("llm", cfg.llm)
        tts = self._tts = self.providers.build("tts", cfg.tts)
        self._clip_key = clip = clip_key(cfg.tts, cfg.voice, cfg.failure_goodbye)
        self._tool_executor(cfg)
        tools = self.executor.specs if self.executor is not None else None
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
            tool_executor=self.executor,
            tools=tools,
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
        if worth_prerendering(self._tts):
            self._clip_render = self.host.clips.ensure(
                self._clip_key, self._tts, self.config.failure_goodbye, self.config.voice)
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
        summary_llm = self._llm if self.config.post_call.summary_prompt else None
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
        conv = self._cascaded("update")
        retuned = retune(self.config, turn_taking) if turn_taking is not None else None
        changed = self._reconfigure(
            prompt=system_prompt,
            tools=parse_tools(tools) if tools is not None else None,
            llm=parse_provider_block("llm", llm) if llm is not None else None,
            tts=parse_provider_block("tts", tts) if tts is not None else None,
            voice=voice, new_agent=new_agent)
        if retuned is not None:
            conv.retune(retuned)
            self.config = retuned
            changed.append("turn_taking")
        return changed

    async def handoff(self, agent_id: str, summary: str = "") -> list[str]:
        """Another stored agent takes the call over from the next answer, with the conversation
        so far: its prompt, tools, LLM, TTS and voice (its greeting and turn-taking settings are
        not applied mid-call). `summary` is added as context for it. `agent.handoff` names it,
        and the call's report lists every agent that took part."""
        self._cascaded("handoff")
        target, version = await stored_agent(self.host.state.db, agent_id)
        changed = self._reconfigure(prompt=target.prompt, tools=list(target.tools),
                                    llm=target.llm, tts=target.tts, voice=target.voice,
                                    new_agent=agent_id, handoff_version=version,
                                    always_handoff=True)
        if summary.strip():
            await self.inject(summary.strip())
        return changed

    def _reconfigure(self, *, prompt: str | None, tools: list[ToolConfig] | None,
                     llm: ProviderBlock | None, tts: ProviderBlock | None, voice: str | None,
                     new_agent: str, handoff_version: int = 0,
                     always_handoff: bool = False) -> list[str]:
        conv = self._cascaded("update")
        # Built before anything changes: a provider that cannot be built leaves the call as
        # it was.
        new_llm = self.providers.build("llm", llm) if llm is not None else None
        new_tts = self.providers.build("tts", tts) if tts is not None else None
        specs: list[Any] | None = None
        created = False
        if tools is not None:
            if self.executor is None:
                self._tool_executor(self.config.model_copy(update={"tools": tools}))
                created = self.executor is not None
            else:
                self.executor.replace_tools(tools)
            specs = self.executor.specs if self.executor is not None else []
        if new_llm is not None:
            # The old one stays in `providers` and is closed at the end of the call (an
            # answer may still be streaming from it).
            self._llm = new_llm
        if new_tts is not None:
            self._tts = new_tts
        changed = conv.update(prompt=prompt, tools=specs, llm=new_llm, tts=new_tts, voice=voice,
                              tool_executor=self.executor if created else None)
        if always_handoff or ("prompt" in changed and ("tools" in changed or "llm" in changed)):
            self.emit(ev.AgentHandoff(new_agent=new_agent, agent_version=handoff_version,
                                      fields=changed))
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
