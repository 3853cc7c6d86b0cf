"""`phonebooth call`: place a simulated Plivo call against a running Phonebooth server.

    phonebooth call --to +14155550199 --wav hello.wav --record heard.wav
    phonebooth call --agent AGENT_ID --say "What are your opening hours?"

The simulator signs its requests with the Plivo auth token (from --auth-token, else
plivo.auth_token in the config), streams the audio in real time, plays back what the agent
says on a simulated clock, prints a timeline and writes what the caller heard to --record.

Like a polite caller it waits for the agent's greeting to end before speaking, and hangs up
once the agent's answer is over (--delay and --duration fix those times instead). Afterwards
it prints the voice-to-voice latency it saw (end of the caller's speech → first agent audio)
and, given an API key (--api-key, else security.admin_api_key in the config), the server's
per-turn latency breakdown from GET /v1/sessions/{id}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from app.cli_base import CommandError, settings_from_args

if TYPE_CHECKING:
    from app.simulator.far_end import SimCall

DEFAULT_URL = "http://127.0.0.1:8000"
HOLD_S = 1.5  # silence after the agent's answer before the caller hangs up
MAX_DURATION_S = 30.0  # the call's cap when --duration is not given
GREETING_WAIT_S = 10.0  # longest wait for the agent's greeting to end
SILENCE_AFTER_GREETING_S = 0.5


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "call", parents=[common], help="simulate a Plivo call against a running server",
        description="Play Plivo's side of a phone call: signed answer request, audio stream, "
        "paced playout with checkpoint acks. Prints a timeline.")
    p.add_argument("--url", help=f"the server's base URL to connect to (default {DEFAULT_URL}"
                   ", the server the config describes)")
    p.add_argument("--public-url", help="the URL the server checks Plivo signatures against "
                   "(its server.public_url). Default: --url when given, else server.public_url "
                   "from the config")
    who = p.add_argument_group("who calls whom")
    who.add_argument("--to", help="the called number (mapped to an agent)")
    who.add_argument("--agent", help="agent id (?agent= on the answer URL) instead of --to")
    who.add_argument("--from", dest="from_", default="+14155550100", help="caller ID")
    audio = p.add_mutually_exclusive_group()
    audio.add_argument("--wav", help="caller audio: a WAV file (any rate, mono or stereo)")
    audio.add_argument("--say", help="caller audio: text spoken with Piper (local extra)")
    p.add_argument("--delay", type=float, default=None,
                   help="speak this many seconds after the call connects (default: once the "
                   "agent's greeting is over)")
    p.add_argument("--dtmf", default="", help="digits to press after the audio, 0.5 s apart")
    p.add_argument("--duration", type=float, default=None,
                   help=f"hang up after this many seconds (default: {HOLD_S:g} s after the "
                   f"agent's answer ends, at most {MAX_DURATION_S:g} s into the call)")
    p.add_argument("--record", help="write what the caller heard to this WAV file")
    p.add_argument("--auth-token", help="Plivo auth token (default: plivo.auth_token)")
    p.add_argument("--api-key", help="API key to read the session's per-turn latency "
                   "(default: security.admin_api_key; without one only voice-to-voice "
                   "is printed)")
    p.add_argument("--quiet", action="store_true", help="print the summary only")
    p.set_defaults(func=_run)


def _settings(args: argparse.Namespace) -> Any:
    if getattr(args, "_settings", None) is None:
        args._settings = settings_from_args(args)
    return args._settings


def _token(args: argparse.Namespace) -> str:
    if args.auth_token:
        return str(args.auth_token)
    settings = _settings(args)
    token = settings.plivo.auth_token.get_secret_value() if settings.plivo.auth_token else ""
    if not token:
        raise CommandError("no Plivo auth token: pass --auth-token or set plivo.auth_token")
    return token


def _addresses(args: argparse.Namespace) -> tuple[str, str]:
    """(where to connect, what to sign over). Plivo signs over the URL it was given, which is
    the server's public_url: with no --url the simulator calls the local server the config
    describes, so it signs over that config's server.public_url (http://localhost:8000 by
    default) while connecting to 127.0.0.1 on the config's server.port. An explicit --url is
    taken as the server's own address unless --public-url says otherwise."""
    if args.url:
        return str(args.url), str(args.public_url or args.url)
    try:
        server = _settings(args).server
    except Exception:  # no usable config: the defaults
        return DEFAULT_URL, str(args.public_url or DEFAULT_URL)
    local = f"http://127.0.0.1:{server.port}"
    return local, str(args.public_url or server.public_url)


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key:
        return str(args.api_key)
    try:
        key = _settings(args).security.admin_api_key
    except Exception:  # no usable config: the latency breakdown is optional
        return None
    return key.get_secret_value() if key else None


def _caller_audio(args: argparse.Namespace) -> tuple[np.ndarray, int] | None:
    if args.wav:
        from pipelines.audio.wav import read_wav

        try:
            return read_wav(args.wav)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {args.wav}: {exc}") from None
    if args.say:
        from app.simulator.voice import VoiceUnavailable, synthesize

        try:
            return synthesize(args.say, 16000), 16000
        except VoiceUnavailable as exc:
            raise CommandError(str(exc)) from None
    return None


def _run(args: argparse.Namespace) -> int:
    if not (args.to or args.agent):
        raise CommandError("say whom to call: --to NUMBER or --agent ID")
    token = _token(args)
    url, public_url = _addresses(args)
    audio = _caller_audio(args)
    try:
        return asyncio.run(_call(args, token, audio, url, public_url))
    except OSError as exc:
        raise CommandError(f"cannot reach {url}: {exc}") from None


async def _call(args: argparse.Namespace, token: str, audio: tuple[np.ndarray, int] | None,
                url: str, public_url: str) -> int:
    import httpx

    from app.simulator.far_end import PlivoSimulator, TimelineEvent
    from pipelines.audio.wav import write_wav

    def show(ev: TimelineEvent) -> None:
        if not args.quiet:
            print(f"{ev.t * 1000:9.1f} ms  {ev.what}", flush=True)

    sim = PlivoSimulator(url, token, public_url=public_url)
    call = sim.call(to=args.to or "", from_=args.from_, agent=args.agent, on_event=show)
    try:
        ans = await call.start()
    except (httpx.HTTPError, OSError) as exc:
        print(f"error: answer request failed: {exc}", file=sys.stderr)
        return 1
    if ans.kind != "stream":
        await call.hangup()
        print(f"call not streamed: the server answered {ans.kind} (HTTP {ans.status_code})")
        if ans.status_code == 403:
            print(f"the signature was refused: it was computed with this auth token over "
                  f"{public_url}; the server checks it with its plivo.auth_token over its "
                  f"server.public_url (pass --auth-token / --public-url to match them)")
        return 1 if ans.status_code != 200 else 0
    duration = args.duration if args.duration is not None else MAX_DURATION_S
    deadline = call.t0 + duration
    try:
        await asyncio.wait_for(_converse(args, call, audio), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        pass
    finally:
        await call.hangup()
    r = call.result
    print(f"\nsummary: {r.play_frames} playAudio frames, heard {len(r.heard) / r.sample_rate:.1f}"
          f" s, max queued at 'Plivo' {r.max_queued_ms:.0f} ms, checkpoints "
          f"{len(r.checkpoints_acked)}/{len(r.checkpoints_received)} acked, "
          f"{len(r.clears)} clear(s), closed by {r.closed_by or 'nobody'} (code {r.close_code})")
    if r.play_errors:
        print("playout errors: " + "; ".join(r.play_errors[:5]))
    if args.record:
        write_wav(args.record, r.heard, r.sample_rate)
        print(f"recorded what the caller heard to {args.record}")
    await _report_latency(args, call, audio)
    return 0


async def _converse(args: argparse.Namespace, call: SimCall,
                    audio: tuple[np.ndarray, int] | None) -> None:
    """The caller's side: wait for the greeting (or --delay), speak, press keys, then stay on
    the line until the answer is over (or until --duration, via the caller's timeout)."""
    if args.delay is not None:
        await asyncio.sleep(args.delay)
    else:
        try:
            if await call.wait_agent_quiet(quiet_s=SILENCE_AFTER_GREETING_S,
                                           within_s=GREETING_WAIT_S):
                call.note("the agent's greeting is over")
        except TimeoutError:
            call.note(f"the agent is still talking after {GREETING_WAIT_S:g} s: speaking anyway")
    if call.closed:
        return
    if audio is not None:
        secs = call.say(*audio)
        call.note(f"caller says {secs:.1f} s of audio")
        await call.wait_for(lambda: call.closed or not call.audio_pending, within_s=secs + 60)
    for digit in args.dtmf:
        if call.closed:
            return
        await call.send_dtmf(digit)
        await asyncio.sleep(0.5)
    if args.duration is not None:
        await call.wait_closed(within_s=args.duration)  # stay until --duration or the end
        return
    if audio is None and not args.dtmf:
        await asyncio.sleep(HOLD_S)  # nothing to say: hang up after the greeting
        return
    spoke_at = time.monotonic()
    # Stay until the agent's answer is over; if it says nothing, until the call's cap.
    answered = await call.wait_agent_quiet(quiet_s=HOLD_S, within_s=MAX_DURATION_S,
                                           speak_within_s=MAX_DURATION_S, since=spoke_at)
    if answered:
        call.note("the agent's answer is over: hanging up")


async def _report_latency(args: argparse.Namespace, call: SimCall,
                          audio: tuple[np.ndarray, int] | None) -> None:
    import httpx

    from app.simulator.latency import (
        fetch_session,
        trailing_silence_s,
        turn_latency_lines,
        voice_to_voice,
    )

    r = call.result
    silence = trailing_silence_s(*audio) if audio is not None else 0.0
    pairs = voice_to_voice(r.caller_audio_ends, r.agent_audio_starts, silence)
    if pairs:
        seen = ", ".join(f"{p.ms:.0f} ms" for p in pairs)
        print(f"voice-to-voice (end of the caller's speech → first agent audio): {seen}")
    elif r.caller_audio_ends:
        print("voice-to-voice: the agent did not answer the caller's audio")
    key = _api_key(args)
    session_id = call.session_id
    if not key or not session_id:
        if not key:
            print("(per-turn latency: pass --api-key or set security.admin_api_key)")
        return
    try:
        session = await fetch_session(call.sim.base_url, session_id, key)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        print(f"per-turn latency unavailable: {exc}")
        return
    lines = turn_latency_lines(session)
    print(f"session {session_id} ({session.get('status')}, "
          f"end reason {session.get('end_reason') or '-'})")
    for line in lines or ["no answered turns recorded"]:
        print("  " + line)
