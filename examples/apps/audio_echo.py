"""Audio mode: echo the caller's audio back one second later; "#" on the keypad clears it.

    python examples/apps/audio_echo.py --port 9000 --secret whsec_...

Point an agent at it: `websocket_url: ws://HOST:9000/` and `mode: audio` (Phonebooth passes the
call's raw audio both ways). After each second of echoed audio a checkpoint is sent; Phonebooth
answers `playedStream` once the caller heard it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from app.voiceapp import Event, Session, VoiceApp

CHUNKS_PER_CHECKPOINT = 50  # 50 x 20 ms


def build_app(secret: str | None = None, *, delay_s: float = 1.0) -> VoiceApp:
    app = VoiceApp(signing_secret=secret)

    async def echo(session: Session, queue: asyncio.Queue[tuple[int, float, str]]) -> None:
        sent = 0
        while True:
            cleared, heard_at, payload = await queue.get()
            if cleared == session.data["cleared"]:
                await asyncio.sleep(max(0.0, heard_at + delay_s - time.monotonic()))
            if cleared != session.data["cleared"]:
                continue  # "#" was pressed since this was heard
            session.send_media(payload, session.data["encoding"], session.data["rate"])
            sent += 1
            if sent % CHUNKS_PER_CHECKPOINT == 0:
                session.send_checkpoint(f"echo-{sent // CHUNKS_PER_CHECKPOINT}")

    @app.on("start")
    async def start(session: Session, event: Event) -> None:
        fmt = event["start"].get("mediaFormat") or {}
        session.data["encoding"] = fmt.get("encoding", "audio/x-mulaw")
        session.data["rate"] = int(fmt.get("sampleRate", 8000))

    @app.on_connect
    async def connected(session: Session) -> None:
        session.data.update(encoding="audio/x-mulaw", rate=8000, cleared=0,
                            queue=asyncio.Queue())
        session.data["echo"] = asyncio.create_task(echo(session, session.data["queue"]))

    @app.on("media")
    async def media(session: Session, event: Event) -> None:
        session.data["queue"].put_nowait(
            (session.data["cleared"], time.monotonic(), event["media"]["payload"]))

    @app.on("dtmf")
    async def dtmf(session: Session, event: Event) -> None:
        if event["dtmf"].get("digit") == "#":
            session.data["cleared"] += 1  # drop what is still waiting to be echoed
            session.clear_audio()

    @app.on("playedStream")
    def played(session: Session, event: Event) -> None:
        logging.info("the caller heard up to %s", event.get("name"))

    @app.on_disconnect
    async def disconnected(session: Session) -> None:
        session.data["echo"].cancel()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="Phonebooth's signing secret (whsec_...)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    build_app(args.secret).run(args.host, args.port)


if __name__ == "__main__":
    main()
