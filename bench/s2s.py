"""Voice-to-voice latency of speech-to-speech agents, through the Plivo path, against the fakes.

The same three processes as `bench/load.py` (whose server, vendor process and driver this
reuses): `phonebooth serve` on a temp config (pinned to `--server-cpu`), the vendors
(`bench/fake_vendors.py --s2s`: the OpenAI Realtime and Gemini Live fakes, plus the fake OpenAI
TTS), and this process driving simulated Plivo calls (`bench/plivo_driver.py`). For each case a
fresh server takes `--calls` concurrent calls of `--turns` questions each (after one warm-up
call), and the driver measures v2v: the caller's last voiced frame → the first voiced
`playAudio` after it.

Cases: `openai_realtime` and `gemini_live`, each with `output: audio` (the model speaks) and
`output: text` (the model writes, the agent's OpenAI TTS fake speaks). The fakes' latencies are
configured, not measured: the model's server VAD ends the caller's turn after
`--s2s-vad-silence-ms` of quiet, its first output comes `--s2s-ms` later, and in text mode the
TTS's first byte `--tts-ms` after each sentence is asked for. "v2v − fakes" subtracts them: what
remains is Phonebooth's part (resampling, playout pacing, sentence chunking, the Plivo
transport) plus the machine's scheduling noise.

    python bench/s2s.py                                  # 1 call × 10 turns per case
    python bench/s2s.py --calls 5 --turns 4 --cases openai_realtime:text
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.load import (  # noqa: E402
    ADMIN_KEY,
    Server,
    _pin,
    db_report,
    fmt,
    load_question,
    machine,
    parse_cpus,
)
from bench.plivo_driver import Caller, Driver, Script, Utterance, percentile  # noqa: E402

CASES = ("openai_realtime:audio", "openai_realtime:text", "gemini_live:audio",
         "gemini_live:text")
GREETING = "Hello! How can I help you today?"


class S2SVendors:
    """bench/fake_vendors.py with the s2s fakes, in its own process."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "fake_vendors.py"), "--s2s",
               "--s2s-ms", str(args.s2s_ms),
               "--s2s-vad-silence-ms", str(args.s2s_vad_silence_ms),
               "--tts-ms", str(args.tts_ms)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, preexec_fn=_pin(args.driver_cpu))
        assert self.proc.stdout is not None
        self.info: dict[str, str] = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def agent_config(provider: str, output: str, vendors: dict[str, str]) -> dict[str, Any]:
    key = {"env": "BENCH_VENDOR_KEY"}
    url = vendors["realtime_url" if provider == "openai_realtime" else "gemini_url"]
    config: dict[str, Any] = {
        "name": f"bench s2s {provider} {output}",
        "prompt": "You are the receptionist of a dental practice. Answer briefly.",
        "greeting": GREETING,
        "s2s": {"provider": provider, "base_url": url, "api_key": key, "max_retries": 0,
                "output": output},
    }
    if output == "text":
        config["tts"] = {"provider": "openai", "base_url": vendors["tts_base"], "api_key": key}
    return config


async def create_agent(server: Server, config: dict[str, Any]) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        r = await client.post(server.base_url + "/v1/agents", json=config,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        if r.status_code != 201:
            raise RuntimeError(f"create agent: HTTP {r.status_code} {r.text[:500]}")
        return str(r.json()["id"])


async def run_case(args: argparse.Namespace, case: str, vendors: S2SVendors,
                   question: Utterance) -> dict[str, Any]:
    from tests.fakes.plivo_rest import run_fake_plivo_rest

    provider, output = case.split(":")
    async with run_fake_plivo_rest() as rest:
        server = Server(args, rest.api_base, rest.auth_id, rest.auth_token,
                        vendors.info.get("api_key", ""))
        try:
            await server.wait_ready()
            agent = await create_agent(server, agent_config(provider, output, vendors.info))
            script = Script(question=question, turns=args.turns, barge_every=0,
                            reply_timeout_s=15.0)
            async with Driver(server.base_url, rest.auth_token, agent=agent, script=script,
                              rest=rest) as drv:
                warm = Driver(server.base_url, rest.auth_token, agent=agent,
                              script=Script(question=question, turns=1, barge_every=0))
                async with warm:
                    await warm.run_call(-1)
                await asyncio.sleep(1.0)
                calls = await asyncio.gather(*(drv.run_call(i) for i in range(args.calls)))
            await asyncio.sleep(1.5)  # the SQL sink writes the last turns
            db = await db_report(server.db_url)
        finally:
            code = server.stop()
            if args.keep_logs:
                print(f"  server log: {server.log_path} (exit {code})", file=sys.stderr)
            else:
                shutil.rmtree(server.dir, ignore_errors=True)
    return summarize(args, case, list(calls), db)


def summarize(args: argparse.Namespace, case: str, calls: list[Caller],
              db: dict[str, Any]) -> dict[str, Any]:
    v2v = [x for c in calls for x in c.stats.v2v_ms]
    fakes_ms = args.s2s_vad_silence_ms + args.s2s_ms + (args.tts_ms if case.endswith(":text")
                                                        else 0.0)
    first_out = db["latency"].get("first_audio_out_ms", [])
    return {
        "case": case, "calls": len(calls),
        "completed": sum(1 for c in calls if c.stats.completed),
        "errors": sorted({c.stats.error for c in calls if c.stats.error})[:5],
        "turns": len(v2v),
        "v2v_ms": {"p50": percentile(v2v, 50), "p95": percentile(v2v, 95)},
        "fakes_ms": fakes_ms,
        "v2v_minus_fakes_ms": {"p50": _minus(percentile(v2v, 50), fakes_ms),
                               "p95": _minus(percentile(v2v, 95), fakes_ms)},
        # The server's own clock: the model's end of the caller's turn → first audio written
        # (Gemini's server VAD reports no end of turn, so it has none).
        "first_audio_out_ms": {"n": len(first_out), "p50": percentile(first_out, 50)},
        "underruns_driver": sum(c.stats.underruns for c in calls),
    }


def _minus(v: float | None, d: float) -> float | None:
    return None if v is None else v - d


HEADER = ("| case | turns | v2v p50 | v2v p95 | fakes' latency | v2v − fakes p50 | p95 "
          "| server first audio out p50 | underruns |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def row(r: dict[str, Any]) -> str:
    v, m = r["v2v_ms"], r["v2v_minus_fakes_ms"]
    return (f"| {r['case']} | {r['turns']} | {fmt(v['p50'])} | {fmt(v['p95'])} | "
            f"{fmt(r['fakes_ms'])} | {fmt(m['p50'])} | {fmt(m['p95'])} | "
            f"{fmt(r['first_audio_out_ms']['p50'])} | {r['underruns_driver']} |")


async def main_async(args: argparse.Namespace) -> int:
    question = load_question(False)
    if args.driver_cpu is not None:
        os.sched_setaffinity(0, args.driver_cpu)
    vendors = S2SVendors(args)
    results: list[dict[str, Any]] = []
    try:
        for case in args.cases.split(","):
            print(f"== {case}", file=sys.stderr)
            r = await run_case(args, case, vendors, question)
            results.append(r)
            print(row(r) + (f"  errors: {r['errors']}" if r["errors"] else ""),
                  file=sys.stderr)
    finally:
        vendors.close()
    out = Path(args.json_out) if args.json_out else \
        ROOT / "bench" / "results" / f"s2s-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "machine": machine(), "time": time.strftime("%F %T")}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    print(HEADER + "\n" + "\n".join(row(r) for r in results))
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated provider:output cases")
    ap.add_argument("--calls", type=int, default=1, help="concurrent calls per case")
    ap.add_argument("--turns", type=int, default=10, help="questions per call")
    ap.add_argument("--s2s-ms", type=float, default=300.0,
                    help="the model fakes' latency to their first output")
    ap.add_argument("--s2s-vad-silence-ms", type=int, default=500,
                    help="quiet that ends a caller turn for the fakes' server VAD")
    ap.add_argument("--tts-ms", type=float, default=150.0,
                    help="the TTS fake's first-byte latency (output: text)")
    ap.add_argument("--server-cpu", default="0",
                    help="core(s) for the server, e.g. 0 or 0,1 (-1: any)")
    ap.add_argument("--driver-cpu", default="1",
                    help="core(s) for the driver and vendors (-1: any)")
    ap.add_argument("--inference-threads", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--models-dir", default=str(Path("~/.cache/phonebooth/models").expanduser()))
    ap.add_argument("--drain-s", type=float, default=30.0)
    ap.add_argument("--keep-logs", action="store_true", help="keep the server's temp dir")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    args.local = False  # bench/load.py's Server reads it (no demo agent)
    args.server_cpu, args.driver_cpu = parse_cpus(args.server_cpu), parse_cpus(args.driver_cpu)
    args.workers = 1
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
