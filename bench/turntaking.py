"""Turn-taking benchmark: the labelled caller set (bench/turntaking_set.json, audio from
bench/caller_set.py) played through the real Plivo path against a real server.

Same three processes as bench/load.py: the server (`phonebooth serve`, Silero VAD + smart-turn,
pinned to `--server-cpu`), the vendor fakes (STT final 150 ms after Finalize, LLM first token
100 ms, TTS first byte 150 ms; pinned to `--driver-cpu`) and this driver (bench/plivo_driver.py).
The fake STT is scripted (bench/scripted_stt.py): it transcribes the words the caller has said
by then, so a Finalize in a mid-sentence pause gets half a sentence and a cough gets nothing.

One call per `--items-per-call` items (a fixed shuffle of the set). A turn item is spoken after
the agent has gone quiet; a backchannel, noise or interruption item is spoken
`agent_speaking_ms` into the answer to a carrier question. Per `--preset` (an agent's
`semantic_vad`; `none` leaves it out) it reports, from the far end's view
(bench/turntaking_metrics.py): false cut-off rate, missed end of turn (> 1.5 s dead air),
backchannel/noise stop rate (agent stops > 300 ms), barge-in onset → the caller stops hearing
the agent p50/p95 (with `hold: pause` that is the hold's clearAudio; a ducked hold's clearAudio
re-sends the audio softer, and the agent goes silent only at the commit) and v2v p50/p95. A
preset the server rejects is reported as n/a.

    python bench/turntaking.py                                  # every preset, all 66 items
    python bench/turntaking.py --preset none --json-out bench/results/turntaking.json
    python bench/turntaking.py --preset none,low --only pause-01,backchannel-01
    python bench/turntaking.py --preset none --hold duck      # interruption.hold set explicitly
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench import turntaking_metrics as tm  # noqa: E402
from bench.caller_set import Item, Rendered, load_set, render  # noqa: E402
from bench.load import ADMIN_KEY, Server, _pin, machine, parse_cpus  # noqa: E402
from bench.plivo_driver import (  # noqa: E402
    FRAME_BYTES,
    RATE,
    VOICED_PEAK,
    Caller,
    Driver,
    Script,
    Utterance,
)
from pipelines.audio.g711 import ulaw_decode  # noqa: E402

PRESETS = ("none", "low", "medium", "high", "auto")
# The agent's answer to everything: ~3.7 s of fake TTS speech, long enough to talk over.
REPLY = ("We are open from nine in the morning until six in the evening, "
         "and until noon on Saturdays.")
QUIET_S = 1.8  # the agent is done: nothing heard or arriving for this long (> a held agent's
# 1.5 s false-interruption window, so a hold that resumes is seen)
REPLY_WAIT_S = 8.0
PAUSE_BEFORE_S = 0.6


def utterance_from_ulaw(r: Rendered, turn_end_ms: float) -> Utterance:
    data = r.ulaw + b"\xff" * ((-len(r.ulaw)) % FRAME_BYTES)
    payloads = [base64.b64encode(data[i:i + FRAME_BYTES]).decode()
                for i in range(0, len(data), FRAME_BYTES)]
    first = int(r.onset_ms / 20)
    last = min(len(payloads) - 1, int(turn_end_ms / 20))
    return Utterance(payloads, first, last)


@dataclass
class Clip:
    item: Item
    rendered: Rendered
    utt: Utterance


class TurnCaller(Caller):
    """A caller that logs what the far end heard and when each utterance started."""

    def __init__(self, driver: Driver, idx: int) -> None:
        super().__init__(driver, idx)
        self.plays: list[tm.Play] = []
        self.clears: list[float] = []
        self.utt_started_at = 0.0
        self.clip: Clip | None = None
        self.reply_start = 0.0  # far-end start of the first agent speech after a clip

    def media_message(self, now: float) -> str | None:
        if self.utt is not None and self.pos == 0:
            self.utt_started_at = now
            d = self.d
            assert isinstance(d, TurnDriver)
            if self.clip is not None:
                d.tell_stt([(now + ms / 1000.0, w) for ms, w in self.clip.rendered.words])
        return super().media_message(now)

    def _on_play(self, b64: str, now: float) -> None:
        start = max(self.play_head, now)
        raw = base64.b64decode(b64)
        pcm = ulaw_decode(raw)
        voiced = bool(len(pcm)) and int(np.abs(pcm.astype(np.int32)).max()) > VOICED_PEAK
        self.plays.append(tm.Play(now, start, len(raw) / RATE, voiced))
        if voiced and self.last_voiced_at is not None and now > self.last_voiced_at:
            self.reply_start = start
        super()._on_play(b64, now)

    async def _on_clear(self, now: float) -> None:
        self.clears.append(now)
        await super()._on_clear(now)

    def quiet_for(self, now: float, s: float) -> bool:
        return now > self.play_head + s and now > self.last_play_at + s


class TurnDriver(Driver):
    caller_cls = TurnCaller

    def __init__(self, *a: Any, vendors: Vendors, carrier: Clip, calls: list[list[Clip]],
                 **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.vendors = vendors
        self.carrier = carrier
        self.calls = calls
        self.results: list[dict[str, Any]] = []
        self.logs: dict[int, tuple[list[tm.Play], list[float]]] = {}

    def tell_stt(self, words: list[tuple[float, str]]) -> None:
        if words:
            self.vendors.say(words)

    async def _play(self, c: TurnCaller, clip: Clip) -> float:
        """Speak a clip; returns the send time of its first frame."""
        c.clip = clip
        c.say(clip.utt)
        await self._wait(c, c.spoken.is_set, 60)
        return c.utt_started_at

    async def _quiet(self, c: TurnCaller, s: float = QUIET_S, within: float = 60) -> None:
        """Until neither the caller (since its last clip ended) nor the agent made a sound for
        `s`: the next item starts on a quiet line, whatever the engine did with this one."""
        after = time.monotonic()
        await self._wait(c, lambda: (c.quiet_for(now := time.monotonic(), s)
                                     and now > after + s), within)

    async def _script(self, c: Caller, stop: asyncio.Event | None) -> None:
        assert isinstance(c, TurnCaller)
        if not await self._wait(c, lambda: c.stats.play_frames > 0, 15):
            raise RuntimeError("no greeting")
        await self._quiet(c)
        for clip in self.calls[c.idx]:
            it, r = clip.item, clip.rendered
            rec: dict[str, Any] = {"id": it.id, "category": it.category, "voice": it.voice,
                                   "rate": it.rate, "noise": (it.noise or {}).get("kind"),
                                   "should_stop_agent": it.should_stop_agent}
            if it.is_turn:
                rec["kind"] = "turn"
                await asyncio.sleep(PAUSE_BEFORE_S)
                t0 = await self._play(c, clip)
                rec["onset"], rec["turn_end"] = t0 + r.onset_ms / 1000, t0 + r.end_ms / 1000
                await self._wait(c, c.voice_started.is_set, REPLY_WAIT_S)
                await self._quiet(c)
            else:
                rec["kind"] = "barge" if it.should_stop_agent else "overlap"
                await asyncio.sleep(PAUSE_BEFORE_S)
                await self._play(c, self.carrier)
                if not await self._wait(c, c.voice_started.is_set, REPLY_WAIT_S):
                    rec["error"] = "no answer to the carrier question"
                    self.results.append(rec)
                    await self._quiet(c)
                    continue
                answer_start = c.reply_start
                assert it.agent_speaking_ms is not None
                lead = answer_start + it.agent_speaking_ms / 1000 - r.onset_ms / 1000
                await asyncio.sleep(max(0.0, lead - time.monotonic()))
                t0 = await self._play(c, clip)
                rec["answer_start"] = answer_start
                rec["onset"], rec["turn_end"] = t0 + r.onset_ms / 1000, t0 + r.end_ms / 1000
                if it.should_stop_agent:  # the interruption gets its own answer: let it come
                    await self._wait(c, c.voice_started.is_set, REPLY_WAIT_S)
                await self._quiet(c)
            rec["until"] = time.monotonic()
            rec["call"] = c.idx
            self.results.append(rec)


def score(results: list[dict[str, Any]], logs: dict[int, tuple[list[tm.Play], list[float]]]
          ) -> float | None:
    """Fill each result's `score`; returns the full answer length used for the stop checks."""
    speech = {k: tm.heard_speech(p, cl) for k, (p, cl) in logs.items()}
    # A full answer: the agent speech heard after clean turn items (no cut-off), median.
    full: list[float] = []
    for r in results:
        if r.get("kind") != "turn" or "call" not in r:
            continue
        sp = speech[r["call"]]
        sc = tm.score_turn(sp, r["onset"], r["turn_end"], r["until"])
        r["score"] = asdict(sc)
        if not sc.cut_off and sc.v2v_s is not None:
            full.append(sum(min(b, r["until"]) - a for a, b in sp
                            if a >= r["turn_end"] and a < r["until"]))
    full_s = float(np.median(full)) if full else None
    for r in results:
        if r.get("kind") == "turn" or "call" not in r:
            continue
        sp, cl = speech[r["call"]], logs[r["call"]][1]
        if r["kind"] == "overlap":
            r["score"] = asdict(tm.score_overlap(sp, cl, r["onset"], r["answer_start"],
                                                 r["until"], full_s))
        else:
            r["score"] = asdict(tm.score_barge(sp, cl, r["onset"], r["turn_end"], r["until"]))
    return full_s


# --- processes -----------------------------------------------------------------------------------
class Vendors:
    """bench/fake_vendors.py with the scripted STT; word timelines go down its stdin."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "fake_vendors.py"), "--scripted-stt",
               "--stt-ms", str(args.stt_ms), "--llm-ms", str(args.llm_ms),
               "--tts-ms", str(args.tts_ms), "--llm-token-ms", "0", "--reply", REPLY]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, preexec_fn=_pin(args.driver_cpu))
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.info: dict[str, str] = json.loads(self.proc.stdout.readline())

    def say(self, words: list[tuple[float, str]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"words": words}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def create_agent(server: Server, vendors: dict[str, str], preset: str,
                       hold: str | None = None) -> tuple[str | None, str]:
    """(agent id, "") or (None, why the server refused the preset)."""
    key = {"env": "BENCH_VENDOR_KEY"}
    config: dict[str, Any] = {
        "name": f"turntaking-{preset}",
        "prompt": "You are the receptionist of a dental practice. Answer briefly.",
        "greeting": "Hello! How can I help you today?",
        "stt": {"provider": "deepgram", "base_url": vendors["stt_ws"], "api_key": key},
        "llm": {"provider": "openai", "base_url": vendors["llm_base"], "api_key": key,
                "model": "gpt-4o-mini"},
        "tts": {"provider": "openai", "base_url": vendors["tts_base"], "api_key": key},
        # The bench's own pace: a quiet caller is not prompted while it waits between items.
        "idle": {"timeout_s": 60},
    }
    if preset != "none":
        config["semantic_vad"] = preset
    if hold is not None:  # set explicitly: wins over the preset's
        config["interruption"] = {"hold": hold}
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        r = await client.post(server.base_url + "/v1/agents", json=config,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    if r.status_code == 201:
        return str(r.json()["id"]), ""
    if preset != "none" and r.status_code in (400, 422):
        return None, f"HTTP {r.status_code}: {r.text[:300]}"
    raise RuntimeError(f"create agent: HTTP {r.status_code} {r.text[:500]}")


async def run_preset(args: argparse.Namespace, preset: str, vendors: Vendors, carrier: Clip,
                     calls: list[list[Clip]]) -> dict[str, Any]:
    from tests.fakes.plivo_rest import run_fake_plivo_rest

    async with run_fake_plivo_rest() as rest:
        server = Server(args, rest.api_base, rest.auth_id, rest.auth_token,
                        vendors.info.get("api_key", ""))
        try:
            await server.wait_ready()
            agent, why = await create_agent(server, vendors.info, preset, args.hold)
            if agent is None:
                return {"preset": preset, "supported": False, "why": why}
            drv = TurnDriver(server.base_url, rest.auth_token, agent=agent,
                             script=Script(question=carrier.utt), rest=rest, vendors=vendors,
                             carrier=carrier, calls=calls)
            async with drv:
                async def on_rest_hangup(call_uuid: str) -> None:
                    for c in drv.callers:
                        if c.call_uuid == call_uuid and c.ws is not None:
                            c.stats.closed_by = "api"
                            with contextlib.suppress(Exception):
                                await c.ws.close()

                rest.on_hangup = on_rest_hangup
                t0 = time.monotonic()
                errors = []
                for i in range(len(calls)):  # one call at a time: the numbers are per turn
                    c = await drv.run_call(i)
                    if c.stats.error:
                        errors.append(f"call {i}: {c.stats.error}")
                    assert isinstance(c, TurnCaller)
                    drv.logs[i] = (c.plays, c.clears)
                wall = time.monotonic() - t0
            errors += [f"{r['id']}: {r['error']}" for r in drv.results if "error" in r]
            full_s = score(drv.results, drv.logs)
            summary = tm.summarize(drv.results).as_dict()
            return {"preset": preset, "supported": True, "summary": summary,
                    "full_answer_s": full_s, "errors": errors, "wall_s": round(wall, 1),
                    "items": drv.results}
        finally:
            code = server.stop()
            if args.keep_logs:
                print(f"  server log: {server.log_path} (exit {code})", file=sys.stderr)
            else:
                shutil.rmtree(server.dir, ignore_errors=True)


def fmt(v: Any, suffix: str = "") -> str:
    return "–" if v is None else f"{v:,.0f}{suffix}" if isinstance(v, float) else f"{v}{suffix}"


HEADER = ("| preset | false cut-off | missed end of turn | backchannel/noise stop "
          "| barge-in → agent silent p50 / p95 ms | barge-ins not stopped | v2v p50 / p95 ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|")


def row(res: dict[str, Any]) -> str:
    if not res.get("supported"):
        return f"| {res['preset']} | n/a | n/a | n/a | n/a | n/a | n/a |"
    s = res["summary"]

    def rate(pct: float | None, n: int, d: int) -> str:
        return "–" if pct is None else f"{pct:.1f} % ({n}/{d})"

    return (f"| {res['preset']} | {rate(s['false_cut_off_pct'], s['cut_offs'], s['turn_items'])}"
            f" | {rate(s['missed_pct'], s['missed'], s['turn_items'])}"
            f" | {rate(s['backchannel_noise_stop_pct'], s['stops'], s['overlap_items'])}"
            f" | {fmt(s['barge_heard_ms']['p50'])} / {fmt(s['barge_heard_ms']['p95'])}"
            f" | {s['barges_not_stopped']}/{s['barge_items']}"
            f" | {fmt(s['v2v_ms']['p50'])} / {fmt(s['v2v_ms']['p95'])} |")


def category_table(res: dict[str, Any]) -> str:
    if not res.get("supported"):
        return ""
    lines = [f"`{res['preset']}` per category (items that went wrong / items):", "",
             "| category | wrong | what counts |", "|---|---:|---|"]
    what = {"complete": "cut off or missed", "pause": "cut off or missed",
            "digits": "cut off or missed", "one_word": "cut off or missed",
            "long": "cut off or missed", "backchannel": "agent stopped",
            "noise": "agent stopped", "interruption": "agent did not stop"}
    for cat, v in res["summary"]["by_category"].items():
        lines.append(f"| {cat} | {v['bad']}/{v['n']} | {what.get(cat, '')} |")
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> tuple[Clip, list[list[Clip]]]:
    cs = load_set()
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else None
    only = {x for x in args.only.split(",") if x}
    unknown = only - {it.id for it in cs.items}
    if unknown:
        raise SystemExit(f"--only: unknown item ids {sorted(unknown)}")
    items = [it for it in cs.items if not only or it.id in only]
    random.Random(args.seed).shuffle(items)

    def clip(it: Item) -> Clip:
        r = render(it, cache)
        return Clip(it, r, utterance_from_ulaw(r, r.end_ms))

    carrier = clip(cs.carrier)
    clips = [clip(it) for it in items]
    k = max(1, args.items_per_call)
    return carrier, [clips[i:i + k] for i in range(0, len(clips), k)]


async def main_async(args: argparse.Namespace) -> int:
    carrier, calls = plan(args)
    print(f"{sum(len(c) for c in calls)} items in {len(calls)} calls", file=sys.stderr)
    if args.driver_cpu is not None:
        os.sched_setaffinity(0, args.driver_cpu)
    vendors = Vendors(args)
    results = []
    try:
        for preset in args.preset.split(","):
            print(f"== preset {preset}", file=sys.stderr)
            res = await run_preset(args, preset, vendors, carrier, calls)
            results.append(res)
            print(HEADER + "\n" + row(res), file=sys.stderr)
            if res.get("errors"):
                print("  errors: " + "; ".join(res["errors"]), file=sys.stderr)
    finally:
        vendors.close()
    out = Path(args.json_out) if args.json_out else \
        ROOT / "bench" / "results" / f"turntaking-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "machine": machine(), "time": time.strftime("%F %T"),
            "reply": REPLY}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    md = HEADER + "\n" + "\n".join(row(r) for r in results) + "\n\n" + "\n\n".join(
        t for t in (category_table(r) for r in results) if t) + "\n"
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"written: {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=",".join(PRESETS),
                    help=f"comma-separated semantic_vad presets of {PRESETS} ('none': omit)")
    ap.add_argument("--only", default="", help="comma-separated item ids (default: all)")
    ap.add_argument("--hold", choices=("pause", "duck"), default=None,
                    help="interruption.hold for every preset (default: the agent's/preset's)")
    ap.add_argument("--items-per-call", type=int, default=12)
    ap.add_argument("--seed", type=int, default=13, help="the item order's shuffle")
    ap.add_argument("--cache-dir", default=None, help="audio cache (bench/caller_set.py)")
    ap.add_argument("--stt-ms", type=float, default=150.0)
    ap.add_argument("--llm-ms", type=float, default=100.0)
    ap.add_argument("--tts-ms", type=float, default=150.0)
    ap.add_argument("--server-cpu", default="0",
                    help="core(s) for the server, e.g. 0 or 0,1 (-1: any)")
    ap.add_argument("--driver-cpu", default="1",
                    help="core(s) for the driver and vendors (-1: any)")
    ap.add_argument("--inference-threads", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--models-dir", default=str(Path("~/.cache/phonebooth/models").expanduser()))
    ap.add_argument("--keep-logs", action="store_true", help="keep the server's temp dir")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    bad = [p for p in args.preset.split(",") if p not in PRESETS]
    if bad:
        ap.error(f"--preset: unknown {bad}; choose from {PRESETS}")
    # What bench.load.Server reads.
    args.database_url, args.drain_s, args.local = None, 10.0, False
    args.server_cpu, args.driver_cpu = parse_cpus(args.server_cpu), parse_cpus(args.driver_cpu)
    args.workers = 1
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
