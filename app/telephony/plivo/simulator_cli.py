"""`phonebooth call`: place a simulated Plivo call against a running Phonebooth server.

    phonebooth call --to +14155550199 --wav hello.wav --record heard.wav
    phonebooth call --agent AGENT_ID --say "What are your opening hours?" --duration 15

The simulator signs its requests with the Plivo auth token (from --auth-token, else
plivo.auth_token in the config), streams the audio in real time, plays back what the agent
says on a simulated clock, prints a timeline and writes what the caller heard to --record.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "call", parents=[common], help="simulate a Plivo call against a running server",
        description="Play Plivo's side of a phone call: signed answer request, audio stream, "
        "paced playout with checkpoint acks. Prints a timeline.")
    p.add_argument("--url", default=DEFAULT_URL,
                   help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--public-url", help="the server's server.public_url, if it differs from "
                   "--url (signatures are computed over it)")
    who = p.add_argument_group("who calls whom")
    who.add_argument("--to", help="the called number (mapped to an agent)")
    who.add_argument("--agent", help="agent id (?agent= on the answer URL) instead of --to")
    who.add_argument("--from", dest="from_", default="+14155550100", help="caller ID")
    audio = p.add_mutually_exclusive_group()
    audio.add_argument("--wav", help="caller audio: a WAV file (any rate, mono or stereo)")
    audio.add_argument("--say", help="caller audio: text spoken with Piper (local extra)")
    p.add_argument("--delay", type=float, default=1.0,
                   help="seconds of silence before the caller speaks (default 1)")
    p.add_argument("--dtmf", default="", help="digits to press after the audio, 0.5 s apart")
    p.add_argument("--duration", type=float, default=10.0,
                   help="hang up after this many seconds (default 10)")
    p.add_argument("--record", help="write what the caller heard to this WAV file")
    p.add_argument("--auth-token", help="Plivo auth token (default: plivo.auth_token)")
    p.add_argument("--quiet", action="store_true", help="print the summary only")
    p.set_defaults(func=_run)


def _token(args: argparse.Namespace) -> str:
    if args.auth_token:
        return str(args.auth_token)
    from app.cli import CommandError, settings_from_args

    settings = settings_from_args(args)
    token = settings.plivo.auth_token.get_secret_value() if settings.plivo.auth_token else ""
    if not token:
        raise CommandError("no Plivo auth token: pass --auth-token or set plivo.auth_token")
    return token


def _caller_audio(args: argparse.Namespace) -> tuple[np.ndarray, int] | None:
    from app.cli import CommandError

    if args.wav:
        from pipelines.audio.wav import read_wav

        try:
            return read_wav(args.wav)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {args.wav}: {exc}") from None
    if args.say:
        from app.telephony.plivo.simulator_voice import VoiceUnavailable, synthesize

        try:
            return synthesize(args.say, 16000), 16000
        except VoiceUnavailable as exc:
            raise CommandError(str(exc)) from None
    return None


def _run(args: argparse.Namespace) -> int:
    from app.cli import CommandError

    if not (args.to or args.agent):
        raise CommandError("say whom to call: --to NUMBER or --agent ID")
    token = _token(args)
    audio = _caller_audio(args)
    try:
        return asyncio.run(_call(args, token, audio))
    except OSError as exc:
        raise CommandError(f"cannot reach {args.url}: {exc}") from None


async def _call(args: argparse.Namespace, token: str, audio: tuple[np.ndarray, int] | None) -> int:
    import httpx

    from app.telephony.plivo.simulator import PlivoSimulator, TimelineEvent
    from pipelines.audio.wav import write_wav

    def show(ev: TimelineEvent) -> None:
        if not args.quiet:
            print(f"{ev.t * 1000:9.1f} ms  {ev.what}", flush=True)

    sim = PlivoSimulator(args.url, token, public_url=args.public_url)
    call = sim.call(to=args.to or "", from_=args.from_, agent=args.agent, on_event=show)
    try:
        ans = await call.start()
    except (httpx.HTTPError, OSError) as exc:
        print(f"error: answer request failed: {exc}", file=sys.stderr)
        return 1
    if ans.kind != "stream":
        await call.hangup()
        print(f"call not streamed: the server answered {ans.kind} (HTTP {ans.status_code})")
        return 1 if ans.status_code != 200 else 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration
    try:
        with_deadline = max(0.0, min(args.delay, deadline - loop.time()))
        await asyncio.sleep(with_deadline)
        if audio is not None and not call.closed:
            secs = call.say(*audio)
            call.note(f"caller says {secs:.1f} s of audio")
            await call.wait_for(lambda: call.closed or not call.audio_pending,
                                within_s=max(0.1, deadline - loop.time()))
        for digit in args.dtmf:
            if call.closed or loop.time() > deadline:
                break
            await call.send_dtmf(digit)
            await asyncio.sleep(0.5)
        remaining = deadline - loop.time()
        if remaining > 0 and not call.closed:
            try:
                await call.wait_closed(within_s=remaining)
            except TimeoutError:
                pass
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
    return 0
