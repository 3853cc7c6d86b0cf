"""The vendors of a load run, in their own process: fake Deepgram STT, fake OpenAI LLM and TTS
(two instances, so each has its own first-byte latency). (The fake Plivo REST API runs in the
driver, which must close a call's stream when the server hangs it up.)

Run by `bench/load.py`; prints one JSON line with the base URLs, then serves until its stdin
closes (the parent exiting ends it too). Latencies model anchors §12: the STT final comes
`--stt-ms` after Finalize, the first LLM token `--llm-ms` after the request, the first TTS byte
`--tts-ms` after the request.

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
    args = ap.parse_args()

    stt_cls = ScriptedDeepgram if args.scripted_stt else FakeDeepgram
    stt = stt_cls(default_transcript=args.transcript, idle_timeout_s=60.0).start()
    stt.finalize_delay_s = args.stt_ms / 1000.0
    llm = FakeOpenAI(default_reply=args.reply, first_byte_delay_s=args.llm_ms / 1000.0,
                     chunk_delay_s=args.llm_token_ms / 1000.0).start()
    tts = FakeOpenAI(first_byte_delay_s=args.tts_ms / 1000.0,
                     tts_ms_per_char=args.tts_ms_per_char).start()
    vendors = (stt, llm, tts)

    info: dict[str, str] = {}
    info.update(stt_ws=stt.ws_base_url, llm_base=llm.base_url, tts_base=tts.base_url,
                api_key=FAKE_API_KEY)
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
