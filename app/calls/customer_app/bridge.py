"""One call's customer app: events out, commands in, websocket tools, text-mode answers.

The call host creates a `CustomerApp` when the agent has a `websocket_url`, opens it before the
engine starts (an app that cannot be reached gets the caller an apology, not silence), forwards
every event it emits through `on_event`, and hands it to the tool executor as the runner of the
`websocket: true` tools. Commands are carried out on the call through `AppCall`; one that cannot
be (bad fields, wrong mode, nothing waiting for it) is answered with an `error` message and the
call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from app.agent_config import AgentConfig
from app.calls.customer_app import commands as cmd
from app.calls.customer_app.audio_relay import AudioRelay
from app.calls.customer_app.link import AppLink
from app.calls.customer_app.text_llm import AppLLM
from app.tools.control import TransferPlan
from app.tools.errors import ToolExecutionError
from pipelines import events as ev
from pipelines.outcomes import EndReason

log = logging.getLogger(__name__)

# What an audio-mode app hears of the engine's events (it has no engine: the rest would be
# empty or misleading); its stream messages come from the relay.
AUDIO_MODE_EVENTS = frozenset(e.type for e in (
    ev.SessionStarted, ev.SessionEnded, ev.SessionError, ev.SessionUsage, ev.UserDtmf,
    ev.CallTransferred, ev.ParticipantAdded, ev.ParticipantRemoved, ev.DtmfSent,
    ev.PlayCompleted,
))


class AppCall(Protocol):
    """What the app may do to its call (`app.calls.call.Call` implements it)."""

    async def say(self, text: str, *, interruptible: bool = True) -> None: ...
    async def play(self, wav: bytes, *, interruptible: bool = True) -> str: ...
    async def hangup(self, reason: str) -> None: ...
    async def transfer(self, plan: TransferPlan) -> None: ...
    async def send_dtmf(self, digits: str) -> None: ...
    async def inject(self, text: str) -> None: ...
    def update(self, system_prompt: str | None = None, tools: list[Any] | None = None,
               llm: dict[str, Any] | None = None, new_agent: str = "", *,
               tts: dict[str, Any] | None = None, voice: str | None = None,
               turn_taking: dict[str, Any] | None = None) -> list[str]: ...
    def play_background(self, sound: str, volume: float = 0.5, loop: bool = True) -> None: ...
    def stop_background(self) -> None: ...
    def extend_response_wait(self, seconds: float) -> None: ...


@dataclass(slots=True)
class _PendingTool:
    future: asyncio.Future[Any]
    deadline: float


class CustomerApp:
    def __init__(self, call: AppCall, config: AgentConfig, *, session_id: str,
                 signing_secret: str, headers: dict[str, str],
                 on_lost: Callable[[], None]) -> None:
        assert config.websocket_url is not None
        self._call = call
        self.mode = config.mode
        self.settings = config.websocket_settings
        self.session_id = session_id
        self._on_lost = on_lost
        self.link = AppLink(config.websocket_url, headers, session_id=session_id,
                            signing_secret=signing_secret, settings=self.settings,
                            on_message=self._on_message, on_reopened=self._reopened,
                            on_lost=self._lost)
        self.llm = AppLLM(self.link.send, self.settings) if self.mode == "text" else None
        self.relay: AudioRelay | None = None  # set by the host in audio mode
        self._remote_tools = {t.name for t in config.tools if t.websocket}
        self._tools: dict[str, _PendingTool] = {}
        self._hello: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rejected = 0  # messages answered with `error`

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self, started: ev.SessionStarted) -> None:
        """Connect and say `session.started`; raises `AppUnreachable`."""
        # `caller` / `callee` as AgentStack apps read them, beside Phonebooth's own names.
        self._hello = {**event_message(started), "call_id": started.call_uuid,
                       "caller": started.from_number, "callee": started.to_number,
                       "mode": self.mode, "resumed": False}
        await self.link.open()
        self.link.send(self._hello)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for p in self._tools.values():
            if not p.future.done():
                p.future.cancel()
        await self.link.close()

    def _reopened(self) -> None:
        self.link.send({**self._hello, "resumed": True})
        if self.relay is not None:
            self.relay.send_start()

    def _lost(self) -> None:
        for p in self._tools.values():
            if not p.future.done():
                p.future.set_exception(ToolExecutionError(
                    "unreachable", "the agent's app disconnected"))
                p.future.exception()  # seen: its tool's run_tool may be gone already
        self._on_lost()

    # -- events out -----------------------------------------------------------------------------
    def on_event(self, event: ev.Event) -> None:
        if self.mode == "audio" and event.type not in AUDIO_MODE_EVENTS:
            return
        msg = event_message(event)
        if isinstance(event, ev.ToolCalled) and event.name in self._remote_tools:
            # Registered now, before the app can possibly answer.
            self._pending(event.call_id)
            msg.update(id=event.call_id, respond=True)
        self.link.send(msg)

    # -- websocket tools (the executor's RemoteTools) -------------------------------------------
    def _pending(self, call_id: str) -> _PendingTool:
        p = self._tools.get(call_id)
        if p is None:
            loop = asyncio.get_running_loop()
            p = self._tools[call_id] = _PendingTool(
                loop.create_future(), loop.time() + self.settings.tool_timeout_s)
        return p

    async def run_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> Any:
        if self.link.lost:
            raise ToolExecutionError("unreachable", "the agent's app is not connected")
        p = self._pending(call_id)
        loop = asyncio.get_running_loop()
        try:
            while True:
                remaining = p.deadline - loop.time()
                if remaining <= 0:
                    raise ToolExecutionError(
                        "timeout", f"the app did not answer within {self.settings.tool_timeout_s:g}"
                        " s")
                done, _ = await asyncio.wait([p.future], timeout=remaining)
                if done:
                    return p.future.result()
        finally:
            self._tools.pop(call_id, None)

    # -- commands in ----------------------------------------------------------------------------
    def _reject(self, code: str, message: str) -> None:
        self.rejected += 1
        log.warning("session %s: app message refused (%s): %s", self.session_id, code, message)
        self.link.send({"type": "error", "code": code, "message": message})

    def _on_message(self, raw: str | bytes) -> None:
        try:
            command = cmd.parse_command(raw)
        except cmd.InvalidMessage as exc:
            self._reject(exc.code, exc.message)
            return
        self._dispatch(command)

    def _spawn(self, what: str, coro: Coroutine[Any, Any, Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:
                self._reject("failed", f"{what}: {exc}"[:300])

        task = asyncio.get_running_loop().create_task(run(), name=f"app-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _now(self, what: str, action: Callable[[], Any]) -> None:
        """A command carried out at once; what it raises goes back to the app."""
        try:
            action()
        except (ValueError, RuntimeError) as exc:
            self._reject("failed", f"{what}: {exc}"[:300])

    def _dispatch(self, c: cmd.Command) -> None:
        call = self._call
        if isinstance(c, cmd.ToolResult | cmd.ToolError):
            p = self._tools.get(c.id)
            if p is None or p.future.done():
                self._reject("not_waiting", f"no tool call {c.id!r} is waiting for an answer")
            elif isinstance(c, cmd.ToolResult):
                p.future.set_result(c.result)
            else:
                p.future.set_exception(ToolExecutionError("failed", c.error[:500]))
        elif isinstance(c, cmd.TextToken):
            if self.llm is None:
                self._reject("not_supported", "text tokens are for mode 'text'")
            elif not self.llm.on_token(c):
                self._reject("not_waiting", "no llm.request is waiting for text")
        elif isinstance(c, cmd.ExtendWait):
            seconds = c.seconds or self.settings.reply_timeout_s
            for p in self._tools.values():
                p.deadline += seconds
            if self.llm is not None:
                self.llm.extend_wait(seconds)
            call.extend_response_wait(seconds)
        elif isinstance(c, cmd.PlayAudio | cmd.Checkpoint | cmd.ClearAudio):
            if self.relay is None:
                self._reject("not_supported", "playAudio, checkpoint and clearAudio are for "
                             "mode 'audio'")
            elif isinstance(c, cmd.ClearAudio):
                self._spawn("clearAudio", self.relay.clear())
            else:
                self.relay.on_audio(c)
        elif isinstance(c, cmd.Update | cmd.Inject) and self.mode == "audio":
            self._reject("not_supported", "an audio-mode call has no LLM to update or inject")
        elif isinstance(c, cmd.Update) and c.llm is not None and self.mode == "text":
            self._reject("not_supported", "in mode 'text' the app is the LLM: update 'llm' in "
                         "managed mode only")
        elif isinstance(c, cmd.Update):
            self._now("update", lambda: call.update(system_prompt=c.system_prompt,
                                                    tools=c.tools, llm=c.llm,
                                                    new_agent=c.new_agent, tts=c.tts,
                                                    voice=c.voice,
                                                    turn_taking=c.turn_taking))
            if c.tools is not None:
                self._remote_tools = {str(t.get("name")) for t in c.tools if t.get("websocket")}
        elif isinstance(c, cmd.Inject):
            self._spawn("inject", call.inject(c.content))
        elif isinstance(c, cmd.Speak):
            self._spawn("speak", call.say(c.text, interruptible=c.allow_interruption))
        elif isinstance(c, cmd.Play):
            self._spawn("play", call.play(c.audio_data, interruptible=c.allow_interruption))
        elif isinstance(c, cmd.Transfer):
            try:
                plan = TransferPlan.to(c.destination, mode=c.mode, brief=c.brief,
                                       dial_mode=c.dial_mode, ring_timeout_s=c.timeout,
                                       failure_message=c.failure_message)
            except ValueError as exc:
                self._reject("invalid_message", str(exc))
            else:
                self._spawn("transfer", call.transfer(plan))
        elif isinstance(c, cmd.SendDtmf):
            self._spawn("send_dtmf", call.send_dtmf(c.digits))
        elif isinstance(c, cmd.Hangup):
            self._spawn("hangup", call.hangup(EndReason.AGENT_HANGUP))
        elif isinstance(c, cmd.Mix):
            self._now("audio.mix", lambda: call.play_background(c.sound, c.volume, c.loop))
        elif isinstance(c, cmd.MixEnable):
            if c.enabled:
                self._reject("invalid_message", "send audio.mix to start background audio")
            else:
                self._now("audio.mix_enable", call.stop_background)


def event_message(event: ev.Event) -> dict[str, Any]:
    """An event as the app receives it: the type and the fields side by side."""
    return {"type": event.type, "agent_session_id": event.session_id,
            "ts": round(event.ts, 3), **event.payload()}


async def close_quietly(app: CustomerApp | None) -> None:
    if app is not None:
        with contextlib.suppress(Exception):
            await app.close()
