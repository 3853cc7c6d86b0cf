"""The vendors of a load run, in their own process: fake Deepgram STT, fake OpenAI LLM and TTS
(two instances, so each has its own first-byte latency). (The fake Plivo REST API runs in the
driver, which must close a call's stream when the server hangs it up.)

Run by `bench/load.py`; prints one JSON line with the base URLs, then serves until its stdin
closes (the parent exiting ends it too). Latencies model anchors §12: the STT final comes
`--stt-ms` after Finalize, the first LLM token `--llm-ms` after the request, the first TTS byte
`--tts-ms` after the request.

With `--s2s` (bench/s2s.py) it also serves the speech-to-speech fakes (OpenAI Realtime and
Gemini Live, tests/fakes/fake_s2s.py): their energy VAD ends a caller turn after
`--s2s-vad-silence-ms` of quiet, and the model's first output comes `--s2s-ms` later.

With `--scripted-stt` (bench/turntaking.py) the STT transcribes what the caller has said by
now (bench/scripted_stt.py); each stdin line is then `{"words": [[monotonic time, word], ...]}`.

    python bench/fake_vendors.py --stt-ms 150 --llm-ms 100 --tts-ms 150
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scripted_stt import ScriptedDeepgram
from tests.fakes.fake_deepgram import FakeDeepgram
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.fake_s2s import GEMINI_PATH, FakeGeminiLive, FakeOpenAIRealtime, _S2SFake
from tests.fakes.vendor_base import FAKE_API_KEY

TRANSCRIPT = "what are your opening hours tomorrow"
REPLY = ("We are open from nine in the morning until six in the evening. "
         "On Saturdays we close at noon, and on Sundays we are closed all day.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stt-ms", type=float, default=150.0)
    ap.add_argument("--llm-ms", type=float, default=100.0)
    ap.add_argument("--tts-ms", type=float, default=150.0)
    ap.add_argument("--llm-token-ms", type=float, default=10.0,
                    help="delay between streamed LLM tokens")
    ap.add_argument("--tts-ms-per-char", type=float, default=40.0,
                    help="length of the spoken answer per character of text")
    ap.add_argument("--reply", default=REPLY)
    ap.add_argument("--transcript", default=TRANSCRIPT)
    ap.add_argument("--scripted-stt", action="store_true",
                    help="transcribe the word timelines given on stdin")
    ap.add_argument("--s2s", action="store_true",
                    help="also serve the OpenAI Realtime and Gemini Live fakes")
    ap.add_argument("--s2s-ms", type=float, default=300.0,
                    help="s2s model: end of the caller's turn (its VAD) → first output")
    ap.add_argument("--s2s-vad-silence-ms", type=int, default=500,
                    help="s2s fakes' server VAD: quiet that ends a caller turn")
    args = ap.parse_args()

    stt_cls = ScriptedDeepgram if args.scripted_stt else FakeDeepgram
    stt = stt_cls(default_transcript=args.transcript, idle_timeout_s=60.0).start()
    stt.finalize_delay_s = args.stt_ms / 1000.0
    llm = FakeOpenAI(default_reply=args.reply, first_byte_delay_s=args.llm_ms / 1000.0,
                     chunk_delay_s=args.llm_token_ms / 1000.0).start()
    tts = FakeOpenAI(first_byte_delay_s=args.tts_ms / 1000.0,
                     tts_ms_per_char=args.tts_ms_per_char).start()
    vendors: tuple[FakeDeepgram | FakeOpenAI | _S2SFake, ...] = (stt, llm, tts)

    info: dict[str, str] = {}
    info.update(stt_ws=stt.ws_base_url, llm_base=llm.base_url, tts_base=tts.base_url,
                api_key=FAKE_API_KEY)
    if args.s2s:
        realtime, gemini = FakeOpenAIRealtime(caller_text=args.transcript), \
            FakeGeminiLive(caller_text=args.transcript)
        for fake in (realtime, gemini):
            fake.default_reply = args.reply
            fake.reply_delay_s = args.s2s_ms / 1000.0
            fake.vad_silence_ms = args.s2s_vad_silence_ms
            fake.ms_per_char = args.tts_ms_per_char
            fake.start()
        vendors = (*vendors, realtime, gemini)
        info.update(realtime_url=realtime.url + "/v1/realtime",
                    gemini_url=gemini.url + GEMINI_PATH)
    print(json.dumps(info), flush=True)
    def trim() -> None:
        # Unbounded request logs would grow through a soak run; keep only open exchanges.
        while not stop.wait(5):
            for v in vendors:
                v.requests[:] = [r for r in v.requests if r.closed_at is None]

    stop = threading.Event()
    threading.Thread(target=trim, daemon=True, name="trim").start()
    for line in sys.stdin:  # until the parent closes our stdin (or dies)
        if args.scripted_stt and line.strip():
            try:
                words = [(float(t), str(w)) for t, w in json.loads(line)["words"]]
            except (ValueError, KeyError, TypeError) as exc:
                print(f"fake_vendors: skipped a bad script line ({exc})", file=sys.stderr)
                continue
            assert isinstance(stt, ScriptedDeepgram)
            stt.say(words)
    stop.set()
    for v in vendors:
        v.stop()


if __name__ == "__main__":
    main()
