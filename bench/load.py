"""Load and latency benchmark: N concurrent simulated Plivo calls against a real server.

Three processes, so the numbers are the server's own:
- the server (`phonebooth serve`, a temp config, a fresh SQLite database — or `--database-url`),
  pinned to `--server-cpu`;
- the vendors (`bench/fake_vendors.py`: fake Deepgram STT, OpenAI LLM and TTS with fixed
  latencies like anchors §12), pinned to `--driver-cpu`;
- this process: the Plivo side (`bench/plivo_driver.py`, every call in one asyncio loop) and a
  fake Plivo REST API, pinned to `--driver-cpu`.

Each call: greeting, then `--turns` questions (a 2 s Piper-spoken question); every
`--barge-every`-th question is spoken while the previous answer plays (a barge-in). For each N in
`--calls` a fresh server takes the calls (started over `--ramp-s`), then reports:
server-added turn latency from the server's own `turn.metrics` (p50/p95/p99), the driver's v2v
(caller's last voiced frame → first voiced `playAudio`) and v2v minus the fakes' configured
latencies, barge-in latency, playout underruns (driver and server), caller frames the engine
dropped because it fell behind (/metrics), event-loop lag (/metrics),
server CPU-seconds per call-minute, RSS per call, and the driver's and vendors' own CPU. It stops
raising N when real time breaks (`--max-p95-ms`, underruns, failed calls), and says for each
level whether it stayed inside the latency targets (`TARGETS`: v2v p95 ≤ 900 ms, server-added
p95 ≤ 400 ms, barge-in heard p95 ≤ 300 ms, no underruns, no dropped caller audio, no failed
calls).

With `--workers N` the server is `phonebooth serve --workers N` tied through Redis
(`--redis-url`); its CPU and RSS are those of the whole process tree (supervisor + workers).

    python bench/load.py                            # N = 1,10,50,100,200
    python bench/load.py --calls 50 --turns 4 --json-out bench/results/n50.json
    python bench/load.py --calls 100 --soak-s 600   # soak: keep 100 calls going for 10 min
    python bench/load.py --calls 50 --sigterm-after-s 20   # SIGTERM mid-load, check the DB
    python bench/load.py --local --calls 1 --turns 3       # the all-local demo agent's v2v
    python bench/load.py --workers 2 --server-cpu 0,1 --driver-cpu -1 --calls 10,20

Results go to bench/results/ (markdown + JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.plivo_driver import Caller, Driver, Script, Utterance, percentile  # noqa: E402

ADMIN_KEY = "pb_bench_admin_0123456789abcdef"
SECRET_KEY = "bench-secret-key-not-for-production-0123456789"
QUESTION = "What are your opening hours tomorrow?"
LOCAL_QUESTION = "What are your opening hours?"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- processes ---------------------------------------------------------------------------------
def _pin(cpus: set[int] | None) -> Any:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def parse_cpus(spec: str) -> set[int] | None:
    """"0" or "0,1" → that set of cores; "-1" (or a core this machine lacks) → any core."""
    cpus = {int(x) for x in spec.split(",") if x.strip()}
    if not cpus or any(c < 0 or c >= (os.cpu_count() or 1) for c in cpus):
        return None
    return cpus


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def proc_tree(pid: int) -> list[int]:
    """`pid` and every live descendant: `serve --workers N`'s workers, llama.cpp workers."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def proc_cpu_s(pid: int) -> float:
    """CPU time of `pid` and its live descendants (utime + stime, all threads)."""
    total = 0.0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / CLK_TCK
    return total


def proc_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its live descendants."""
    total = 0.0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/statm") as f:
            total += int(f.read().split()[1]) * PAGE / 2**20
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Vendors:
    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "fake_vendors.py"),
               "--stt-ms", str(args.stt_ms), "--llm-ms", str(args.llm_ms),
               "--tts-ms", str(args.tts_ms), "--llm-token-ms", str(args.llm_token_ms)]
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


class Server:
    """`phonebooth serve` on a temp config and database."""

    def __init__(self, args: argparse.Namespace, rest_base: str, auth_id: str, auth_token: str,
                 vendor_key: str, database_url: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pb-bench-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.db_url = (database_url or args.database_url
                       or f"sqlite+aiosqlite:///{self.dir / 'bench.db'}")
        config = {
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": self.base_url,
                       "log_level": "info"},
            "database": {"url": self.db_url},
            "security": {"secret_key": SECRET_KEY, "admin_api_key": ADMIN_KEY,
                         "secret_key_file": str(self.dir / "secret.key")},
            "plivo": {"auth_id": auth_id, "auth_token": auth_token, "api_base_url": rest_base},
            "limits": {"max_concurrent_calls": 2000, "drain_timeout_s": args.drain_s},
            "models": {"dir": args.models_dir, "fetch_on_start": False},
            "inference": {"threads": args.inference_threads,
                          "max_wait_ms": args.max_wait_ms},
            "demo": {"create_on_start": bool(args.local)},
        }
        self.workers = args.workers
        if args.workers > 1:
            # The workers are one service through Redis; a prefix of its own per run.
            config["bus"] = {"url": args.redis_url, "key_prefix": f"pb-bench-{self.port}"}
        cfg = self.dir / "config.json"  # YAML is a superset of JSON
        cfg.write_text(json.dumps(config))
        self.log_path = self.dir / "server.log"
        env = {**os.environ, "BENCH_VENDOR_KEY": vendor_key, "PYTHONUNBUFFERED": "1"}
        exe = shutil.which("phonebooth", path=str(Path(sys.executable).parent)) or "phonebooth"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([exe, "serve", "--config", str(cfg),
                                      "--workers", str(args.workers)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_pin(args.server_cpu))
        self.pid = self.proc.pid

    async def wait_ready(self, within_s: float = 120) -> None:
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited; log: {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    # Every worker must be up, or the first calls all land on worker 0.
                    if ((await client.get(self.base_url + "/readyz")).status_code == 200
                            and self.log_text().count("Application startup complete")
                            >= self.workers):
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError("server not ready in time")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def create_agent(server: Server, vendors: dict[str, str]) -> str:
    key = {"env": "BENCH_VENDOR_KEY"}
    config = {
        "name": "bench",
        "prompt": "You are the receptionist of a dental practice. Answer briefly.",
        "greeting": "Hello! How can I help you today?",
        "stt": {"provider": "deepgram", "base_url": vendors["stt_ws"], "api_key": key},
        "llm": {"provider": "openai", "base_url": vendors["llm_base"], "api_key": key,
                "model": "gpt-4o-mini"},
        "tts": {"provider": "openai", "base_url": vendors["tts_base"], "api_key": key},
    }
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        r = await client.post(server.base_url + "/v1/agents", json=config,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        if r.status_code != 201:
            raise RuntimeError(f"create agent: HTTP {r.status_code} {r.text[:500]}")
        return str(r.json()["id"])


async def scrape(server: Server) -> dict[str, float]:
    """/metrics as {sample name with labels: value}; {} with several workers, where each
    request reaches one process at random and a difference of two scrapes means nothing."""
    out: dict[str, float] = {}
    if server.workers > 1:
        return out
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        text = (await client.get(server.base_url + "/metrics")).text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def hist_quantiles(before: dict[str, float], after: dict[str, float], metric: str,
                   qs: tuple[float, ...] = (0.5, 0.99)) -> dict[str, Any]:
    """Quantile upper bounds (bucket edges) of a histogram's growth between two scrapes."""
    buckets: list[tuple[float, float]] = []
    prefix = metric + "_bucket{"
    for k, v in after.items():
        if k.startswith(prefix) and 'le="' in k:
            le = k.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, v - before.get(k, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    res: dict[str, Any] = {"count": total}
    for q in qs:
        res[f"p{int(q * 100)}_le"] = next((b for b, n in buckets if total and n >= q * total),
                                          None)
    nonzero = [b for (b, n), (_, prev) in zip(buckets, [(0, 0.0), *buckets], strict=False)
               if n > prev]
    res["max_le"] = nonzero[-1] if nonzero else None
    s = after.get(metric + "_sum", 0.0) - before.get(metric + "_sum", 0.0)
    res["mean_ms"] = round(s / total * 1000, 2) if total else None
    return res


async def db_report(db_url: str, since: Any = None) -> dict[str, Any]:
    """Turn latencies (the engine's turn.metrics, stored per turn) and session states."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT latency FROM turns WHERE latency IS NOT NULL"))).all()
            statuses = (await conn.execute(text(
                "SELECT status, end_reason, count(*) FROM sessions GROUP BY status, end_reason"
            ))).all()
    finally:
        await engine.dispose()
    lat: dict[str, list[float]] = {}
    for (raw,) in rows:
        d = json.loads(raw) if isinstance(raw, str) else raw
        for k, v in (d or {}).items():
            if isinstance(v, int | float):
                lat.setdefault(k, []).append(float(v))
    return {"latency": lat,
            "sessions": [{"status": s, "end_reason": r, "count": n} for s, r, n in statuses]}


def server_underruns(log: str) -> tuple[int, int]:
    """(sum of per-session playout underruns, sessions) from the server's end-of-call lines."""
    total = sessions = 0
    for line in log.splitlines():
        if "playout underruns" in line and "ended (" in line:
            with contextlib.suppress(ValueError, IndexError):
                total += int(line.rsplit("messages skipped, ", 1)[1].split()[0])
                sessions += 1
    return total, sessions


# --- one load level ------------------------------------------------------------------------------
class Sampler:
    """Server CPU and RSS once a second while the load runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss: list[tuple[float, float, int]] = []  # (t, MB, active calls)
        self.active = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            with contextlib.suppress(OSError):
                self.rss.append((round(time.monotonic() - t0, 1), proc_rss_mb(self.pid),
                                 self.active))
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def fmt(v: float | None, nd: int = 0) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


@contextlib.asynccontextmanager
async def fresh_database(url: str | None, name: str) -> Any:
    """A Postgres `url` → a new empty database `name` beside it for one level (its numbers
    must not mix with an earlier level's rows), dropped afterwards; None stays None (SQLite)."""
    if url is None:
        yield None
        return
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql")
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def run_level(args: argparse.Namespace, n: int, vendors: Vendors, question: Utterance
                    ) -> dict[str, Any]:
    from tests.fakes.plivo_rest import run_fake_plivo_rest

    async with run_fake_plivo_rest() as rest, \
            fresh_database(args.database_url, f"pb_bench_{os.getpid()}_{n}") as db_url:
        server = Server(args, rest.api_base, rest.auth_id, rest.auth_token,
                        vendors.info.get("api_key", ""), db_url)
        try:
            return await _run_level(args, n, vendors, question, rest, server)
        finally:
            code = server.stop()
            if args.keep_logs:
                print(f"  server log: {server.log_path} (exit {code})", file=sys.stderr)
            else:
                shutil.rmtree(server.dir, ignore_errors=True)


async def _run_level(args: argparse.Namespace, n: int, vendors: Vendors, question: Utterance,
                     rest: Any, server: Server) -> dict[str, Any]:
    await server.wait_ready()
    agent = "demo" if args.local else await create_agent(server, vendors.info)
    script = Script(question=question, turns=args.turns, barge_every=args.barge_every,
                    barge_after_s=args.barge_after_s,
                    reply_timeout_s=30.0 if args.local else 15.0)
    async with Driver(server.base_url, rest.auth_token, agent=agent, script=script,
                      rest=rest) as drv:
        async def on_rest_hangup(call_uuid: str) -> None:
            for c in drv.callers:
                if c.call_uuid == call_uuid and c.ws is not None:
                    c.stats.closed_by = "api"
                    with contextlib.suppress(Exception):
                        await c.ws.close()

        rest.on_hangup = on_rest_hangup
        # Warm-up call: first-use imports and connection pools, not part of the numbers.
        if not args.no_warmup:
            warm = Driver(server.base_url, rest.auth_token, agent=agent,
                          script=Script(question=question, turns=1, barge_every=0))
            async with warm:
                await warm.run_call(-1)
        await asyncio.sleep(1.0)
        idle_rss = proc_rss_mb(server.pid)
        before = await scrape(server)
        cpu0, t0 = proc_cpu_s(server.pid), time.monotonic()
        my0 = os.times()
        ven0 = proc_cpu_s(vendors.proc.pid)
        sampler = Sampler(server.pid)
        sampler.start()
        stop = asyncio.Event()
        done: list[Caller] = []
        sigterm_at: float | None = None

        def on_done(c: Caller) -> None:
            done.append(c)
            sampler.active -= 1

        async def one(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            sampler.active += 1
            await drv.run_call(i, on_done, stop)

        async def keep_going(i: int, delay: float, until: float) -> None:
            # Soak: each slot starts a new call as soon as its previous one ends.
            await asyncio.sleep(delay)
            while time.monotonic() < until and not stop.is_set():
                sampler.active += 1
                await drv.run_call(i, on_done, stop)
                i += n

        ramp = args.ramp_s if args.ramp_s is not None else min(10.0, n / 20)
        if args.soak_s:
            until = time.monotonic() + args.soak_s
            tasks = [asyncio.create_task(keep_going(i, ramp * i / n, until)) for i in range(n)]
        else:
            tasks = [asyncio.create_task(one(i, ramp * i / n)) for i in range(n)]
        if args.sigterm_after_s:
            await asyncio.sleep(args.sigterm_after_s)
            sigterm_at = time.monotonic() - t0
            print(f"  SIGTERM to the server after {sigterm_at:.1f} s with "
                  f"{sampler.active} calls up", file=sys.stderr)
            server.sigterm()
        await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.monotonic() - t0
        cpu = proc_cpu_s(server.pid) - cpu0 if server.proc.poll() is None else None
        my1 = os.times()
        ven = proc_cpu_s(vendors.proc.pid) - ven0
        await sampler.stop()
        after = await scrape(server) if server.proc.poll() is None else before
    if sigterm_at is not None:
        server.proc.wait(args.drain_s + 30)
    # Give the SQL sink a moment to write the last turns.
    await asyncio.sleep(1.5)
    db = await db_report(server.db_url)
    return summarize(args, n, done, drv, db, before, after, cpu, wall, idle_rss, sampler,
                     (my1.user + my1.system) - (my0.user + my0.system), ven, server, sigterm_at)


def summarize(args: argparse.Namespace, n: int, done: list[Caller], drv: Driver,
              db: dict[str, Any], before: dict[str, float], after: dict[str, float],
              cpu: float | None, wall: float, idle_rss: float, sampler: Sampler,
              driver_cpu: float, vendor_cpu: float, server: Server,
              sigterm_at: float | None) -> dict[str, Any]:
    real = [c for c in done if c.idx >= 0]
    st = [c.stats for c in real]
    v2v = [x for s in st for x in s.v2v_ms]
    v2v_b = [x for s in st for x in s.v2v_barge_ms]
    provider_ms = args.stt_ms + args.llm_ms + args.tts_ms
    clear = [x for s in st for x in s.barge_clear_ms]
    heard = [x for s in st for x in s.barge_heard_ms]
    call_minutes = sum(s.ended_at - s.started_at for s in st) / 60.0
    peak = max((r for _, r, _ in sampler.rss), default=idle_rss)
    peak_active = max((a for _, _, a in sampler.rss), default=n)
    lat = db["latency"]
    sa = lat.get("server_added_ms", [])
    srv_under, srv_sessions = server_underruns(server.log_text())
    res = {
        "calls": n, "turns_per_call": args.turns, "barge_every": args.barge_every,
        "completed": sum(1 for s in st if s.completed), "failed": sum(1 for s in st
                                                                     if not s.completed),
        "errors": sorted({s.error for s in st if s.error})[:5],
        "turns": sum(s.turns_done for s in st),
        "server_added_ms": {"n": len(sa), "p50": percentile(sa, 50), "p95": percentile(sa, 95),
                            "p99": percentile(sa, 99)},
        "stages_p50_ms": {k: percentile(v, 50) for k, v in lat.items()},
        "stages_p95_ms": {k: percentile(v, 95) for k, v in lat.items()},
        "v2v_ms": {"n": len(v2v), "p50": percentile(v2v, 50), "p95": percentile(v2v, 95),
                   "p99": percentile(v2v, 99)},
        "v2v_after_barge_in_ms": {"n": len(v2v_b), "p50": percentile(v2v_b, 50),
                                  "p95": percentile(v2v_b, 95)},
        "v2v_minus_providers_ms": {"p50": _minus(percentile(v2v, 50), provider_ms),
                                   "p95": _minus(percentile(v2v, 95), provider_ms),
                                   "p99": _minus(percentile(v2v, 99), provider_ms)},
        "provider_latency_ms": provider_ms,
        "barge_in_clear_ms": {"n": len(clear), "p50": percentile(clear, 50),
                              "p95": percentile(clear, 95)},
        "barge_in_heard_ms": {"n": len(heard), "p50": percentile(heard, 50),
                              "p95": percentile(heard, 95)},
        "barges_unresolved": sum(s.barges_unresolved for s in st),
        "engine_barge_in": hist_quantiles(before, after, "phonebooth_barge_in_latency_seconds",
                                          (0.5, 0.95)),
        "underruns_driver": sum(s.underruns for s in st),
        "underrun_ms_driver": round(sum(s.underrun_ms for s in st), 1),
        "calls_with_underruns": sum(1 for s in st if s.underruns),
        "underruns_server": srv_under, "server_sessions_logged": srv_sessions,
        # Caller audio the engine dropped because it fell behind (its inbox overflowed).
        "caller_frames_dropped": round(after.get("phonebooth_inbound_frames_dropped_total", 0.0)
                                       - before.get("phonebooth_inbound_frames_dropped_total",
                                                    0.0)),
        "event_loop_lag": hist_quantiles(before, after, "phonebooth_event_loop_lag_seconds"),
        "server_cpu_s": None if cpu is None else round(cpu, 2),
        "wall_s": round(wall, 1),
        "call_minutes": round(call_minutes, 2),
        "cpu_s_per_call_minute": None if cpu is None or not call_minutes
        else round(cpu / call_minutes, 3),
        "server_cpu_pct_of_core": None if cpu is None else round(100 * cpu / wall, 1),
        "idle_rss_mb": round(idle_rss, 1), "peak_rss_mb": round(peak, 1),
        "peak_active_calls": peak_active,
        "rss_per_call_mb": round((peak - idle_rss) / max(1, peak_active), 2),
        "rss_samples": sampler.rss if args.soak_s else sampler.rss[-5:],
        "driver_cpu_s": round(driver_cpu, 2), "vendors_cpu_s": round(vendor_cpu, 2),
        "driver_pacer_late_ms_max": round(max(drv.pacer_late_ms, default=0.0), 1),
        "inference": inference_stats(before, after),
        "sessions": db["sessions"],
        "sigterm_at_s": sigterm_at,
    }
    return res


def inference_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per model: batched runs, items, mean batch size and mean run time during the level."""
    out: dict[str, Any] = {}
    for model in ("silero_vad", "smart_turn"):
        def delta(name: str, model: str = model) -> float:
            key = f'phonebooth_{name}{{model="{model}"}}'
            return after.get(key, 0.0) - before.get(key, 0.0)
        runs, items = delta("inference_batch_size_count"), delta("inference_batch_size_sum")
        run_ms = delta("inference_run_ms_sum")
        out[model] = {"runs": runs, "items": items,
                      "mean_batch": round(items / runs, 2) if runs else None,
                      "mean_run_ms": round(run_ms / runs, 2) if runs else None,
                      "run_ms_total": round(run_ms, 1)}
    return out


def _minus(v: float | None, d: float) -> float | None:
    return None if v is None else v - d


def print_row(r: dict[str, Any]) -> str:
    sa, v2v, vm = r["server_added_ms"], r["v2v_ms"], r["v2v_minus_providers_ms"]
    b = r["barge_in_heard_ms"]
    bc = r["barge_in_clear_ms"]
    lag = r["event_loop_lag"]
    lag_ms = ("–" if lag["max_le"] is None else
              f"{fmt((lag['p99_le'] or 0) * 1000)} / {fmt(lag['max_le'] * 1000)}")
    return (f"| {r['calls']} | {r['completed']}/{r['failed']} | {fmt(sa['p50'])} | "
            f"{fmt(sa['p95'])} | {fmt(sa['p99'])} | {fmt(v2v['p50'])} | {fmt(v2v['p95'])} | "
            f"{fmt(vm['p50'])} | {fmt(vm['p95'])} | {fmt(b['p50'])} / {fmt(bc['p50'])} | "
            f"{fmt(b['p95'])} / {fmt(bc['p95'])} | {r['underruns_driver']} "
            f"({r['calls_with_underruns']}) / {r['underruns_server']} | "
            f"{r['caller_frames_dropped']} | {lag_ms} | "
            f"{fmt(r['cpu_s_per_call_minute'], 2)} | {fmt(r['server_cpu_pct_of_core'])} % | "
            f"{fmt(r['rss_per_call_mb'], 1)} | {fmt(r['driver_cpu_s'] / r['wall_s'] * 100)} % "
            f"+ {fmt(r['vendors_cpu_s'] / r['wall_s'] * 100)} % |")


HEADER = (
    "| calls | ok/failed | server-added p50 | p95 | p99 | v2v p50 | v2v p95 | v2v−providers p50 "
    "| p95 | barge-in heard/clear p50 | heard/clear p95 | underruns driver (calls) / server "
    "| caller frames dropped | loop lag p99 / max ≤ ms | CPU-s per call-min | server CPU "
    "| RSS MB per call | driver + vendors CPU |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def broken(args: argparse.Namespace, r: dict[str, Any]) -> str:
    v = r["v2v_ms"]["p95"]
    if r["failed"] > max(1, r["calls"] // 20):
        return f"{r['failed']} failed calls"
    if v is not None and v > args.max_p95_ms:
        return f"v2v p95 {v:.0f} ms > {args.max_p95_ms:.0f}"
    if r["underruns_driver"] > args.max_underruns:
        return f"{r['underruns_driver']} underruns"
    return ""


# The latency targets a level must meet to count as "carried" (50 calls per core, and the
# scale-out comparison of `--workers`): each as (what, value, limit).
TARGETS = {"v2v p95": ("v2v_ms", "p95", 900.0),
           "server-added p95": ("server_added_ms", "p95", 400.0),
           "barge-in heard p95": ("barge_in_heard_ms", "p95", 300.0)}


def outside_targets(r: dict[str, Any]) -> list[str]:
    """What keeps a level from counting as carried inside the latency targets."""
    out = [f"{name} {r[key][q]:.0f} ms > {limit:.0f}" for name, (key, q, limit)
           in TARGETS.items() if r[key][q] is not None and r[key][q] > limit]
    if r["underruns_driver"] or r["underruns_server"]:
        out.append(f"underruns {r['underruns_driver']} / {r['underruns_server']}")
    if r["caller_frames_dropped"]:
        out.append(f"{r['caller_frames_dropped']} caller frames dropped")
    if r["failed"]:
        out.append(f"{r['failed']} failed calls")
    return out


def load_question(local: bool) -> Utterance:
    from tests.speech import speech_bounds_ms, synthesize

    pcm = synthesize(LOCAL_QUESTION if local else QUESTION)
    start, end = speech_bounds_ms(pcm)
    # Trim to the voice with 40 ms either side: the driver's silence does the rest.
    a, b = max(0, int((start - 40) * 16)), min(len(pcm), int((end + 40) * 16))
    return Utterance.from_pcm16k(pcm[a:b], start - a / 16, end - a / 16)


async def main_async(args: argparse.Namespace) -> int:
    question = load_question(args.local)
    print(f"question: {len(question.payloads) * 20} ms of audio, voiced frames "
          f"{question.first_voiced}..{question.last_voiced}", file=sys.stderr)
    if args.driver_cpu is not None:
        os.sched_setaffinity(0, args.driver_cpu)
    vendors = Vendors(args)
    results: list[dict[str, Any]] = []
    try:
        for n in [int(x) for x in args.calls.split(",")]:
            print(f"== {n} calls", file=sys.stderr)
            r = await run_level(args, n, vendors, question)
            results.append(r)
            r["outside_targets"] = outside_targets(r)
            print(HEADER.splitlines()[0] + "\n" + HEADER.splitlines()[1] + "\n" + print_row(r),
                  file=sys.stderr)
            print(f"  inside the latency targets: "
                  f"{'; '.join(r['outside_targets']) or 'yes'}", file=sys.stderr)
            why = broken(args, r)
            if why and not args.keep_going:
                print(f"real time broke at {n} calls: {why}; stopping", file=sys.stderr)
                break
    finally:
        vendors.close()
    out = Path(args.json_out) if args.json_out else \
        ROOT / "bench" / "results" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "machine": machine(), "time": time.strftime("%F %T")}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    md = out.with_suffix(".md")
    md.write_text(HEADER + "\n" + "\n".join(print_row(r) for r in results) + "\n")
    print(HEADER + "\n" + "\n".join(print_row(r) for r in results))
    print(f"\nwritten: {out} and {md}", file=sys.stderr)
    return 0


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    return {"nproc": os.cpu_count(), "cpu": model, "mem": mem,
            "python": sys.version.split()[0], "loadavg": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="1,10,50,100,200", help="comma-separated N levels")
    ap.add_argument("--turns", type=int, default=4, help="questions per call")
    ap.add_argument("--barge-every", type=int, default=2,
                    help="every k-th question interrupts the previous answer (0: never)")
    ap.add_argument("--barge-after-s", type=float, default=0.8,
                    help="how far into the answer the interrupting question starts")
    ap.add_argument("--ramp-s", type=float, default=None,
                    help="spread call starts over this many seconds (default N/20, ≤ 10)")
    ap.add_argument("--stt-ms", type=float, default=150.0)
    ap.add_argument("--llm-ms", type=float, default=100.0)
    ap.add_argument("--tts-ms", type=float, default=150.0)
    ap.add_argument("--llm-token-ms", type=float, default=0.0,
                    help="delay between streamed LLM tokens (0: the answer follows the first "
                    "token at once, so v2v − providers is the server's part)")
    ap.add_argument("--server-cpu", default="0",
                    help="core(s) for the server, e.g. 0 or 0,1 (-1: any)")
    ap.add_argument("--driver-cpu", default="1",
                    help="core(s) for the driver and vendors (-1: any)")
    ap.add_argument("--workers", type=int, default=1,
                    help="`phonebooth serve --workers N` (N > 1 ties them through Redis: "
                    "--redis-url); CPU and RSS are summed over the server's process tree")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--inference-threads", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=2.0,
                    help="server inference.max_wait_ms (how long a VAD batch gathers)")
    ap.add_argument("--database-url", default=None,
                    help="a Postgres server's URL: each level gets a fresh database on it "
                    "(default: a fresh SQLite file per level)")
    ap.add_argument("--models-dir", default=str(Path("~/.cache/phonebooth/models").expanduser()))
    ap.add_argument("--max-p95-ms", type=float, default=2000.0,
                    help="stop raising N when v2v p95 exceeds this")
    ap.add_argument("--max-underruns", type=int, default=50)
    ap.add_argument("--keep-going", action="store_true", help="run every level regardless")
    ap.add_argument("--soak-s", type=float, default=0.0,
                    help="keep N calls going (new ones as old ones end) for this long")
    ap.add_argument("--sigterm-after-s", type=float, default=0.0,
                    help="SIGTERM the server this long into the load, then check the DB")
    ap.add_argument("--drain-s", type=float, default=30.0, help="server limits.drain_timeout_s")
    ap.add_argument("--local", action="store_true",
                    help="call the all-local demo agent (Whisper, llama.cpp, Piper)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--keep-logs", action="store_true", help="keep the server's temp dir")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    args.server_cpu, args.driver_cpu = parse_cpus(args.server_cpu), parse_cpus(args.driver_cpu)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
