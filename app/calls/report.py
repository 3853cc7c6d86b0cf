"""The post-call report: transcript, counts, tool calls, usage totals, latency percentiles and an
optional LLM summary. It is delivered as the `report` of `session.ended` and stored in
`sessions.report`.

`build_report()` is a pure function over turn / tool-call / usage records (ORM rows or dicts).
The host can feed a `ReportCollector` with the call's events as they happen and build the report
at hang-up without reading the database; `report_from_db()` rebuilds it from stored rows (all but
`provider_fallbacks` and `errors`, which only the live events carry).
`summarize()` asks an LLM for a summary with the agent's `post_call.summary_prompt`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.repos import sessions as sessions_repo
from app.db.repos import usage as usage_repo
from pipelines.events import Event

log = logging.getLogger(__name__)

MAX_COLLECTED_TURNS = 5000
# Provider switches and errors kept for the report; a call that keeps failing keeps its first
# ones (the cause) and a count.
MAX_COLLECTED_INCIDENTS = 50
SUMMARY_TRANSCRIPT_CHARS = 24_000


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def build_report(
    *,
    turns: Iterable[Any],
    tool_calls: Iterable[Any] = (),
    usage: Iterable[Any] = (),
    duration_s: float | None = None,
    summary: str | None = None,
    provider_fallbacks: Iterable[Mapping[str, Any]] = (),
    errors: Iterable[Mapping[str, Any]] = (),
    handoffs: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    transcript: list[dict[str, Any]] = []
    stage_values: dict[str, list[float]] = {}
    user_turns = agent_turns = interruptions = 0
    for t in turns:
        role = str(_get(t, "role", ""))
        if role not in ("user", "assistant"):
            continue
        entry: dict[str, Any] = {"role": role, "text": _get(t, "text", "") or ""}
        if role == "user":
            user_turns += 1
        else:
            agent_turns += 1
            heard = _get(t, "heard_text")
            interrupted = bool(_get(t, "interrupted", False))
            entry["heard_text"] = heard if heard is not None else entry["text"]
            entry["interrupted"] = interrupted
            interruptions += interrupted
        latency = _get(t, "latency")
        if isinstance(latency, Mapping):
            for stage, v in latency.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    stage_values.setdefault(stage, []).append(float(v))
        transcript.append(entry)

    calls: list[dict[str, Any]] = []
    by_status: dict[str, int] = {}
    for c in tool_calls:
        status = str(_get(c, "status", "") or "running")
        by_status[status] = by_status.get(status, 0) + 1
        lat = _get(c, "latency_ms")
        calls.append({"name": _get(c, "name", ""), "status": status,
                      "latency_ms": None if lat is None else round(float(lat), 1)})

    totals: dict[tuple[str, str, str, str], float] = {}
    for u in usage:
        key = (str(_get(u, "kind", "")), str(_get(u, "provider", "")),
               str(_get(u, "model", "") or ""), str(_get(u, "metric", "")))
        totals[key] = totals.get(key, 0.0) + float(_get(u, "quantity", 0.0) or 0.0)

    latency_summary = {
        stage: {"p50": round(percentile(vs, 50), 1), "p95": round(percentile(vs, 95), 1),
                "n": len(vs)}
        for stage, vs in sorted(stage_values.items())
    }
    report: dict[str, Any] = {
        "duration_s": None if duration_s is None else round(float(duration_s), 3),
        "turns": user_turns + agent_turns,
        "user_turns": user_turns,
        "agent_turns": agent_turns,
        "interruptions": interruptions,
        "transcript": transcript,
        "tool_calls": {"total": len(calls), "by_status": by_status, "calls": calls},
        "usage": [
            {"kind": k[0], "provider": k[1], "model": k[2], "metric": k[3], "quantity": q}
            for k, q in sorted(totals.items())
        ],
        "latency_ms": latency_summary,
        # Failover is visible on the session: which provider gave way to which, and why.
        "provider_fallbacks": [dict(f) for f in provider_fallbacks],
        # Every persona that took the call over after the agent it began with.
        "handoffs": [dict(h) for h in handoffs],
        "errors": [dict(e) for e in errors],
    }
    if summary is not None:
        report["summary"] = summary
    return report


class ReportCollector:
    """Collects one call's report inputs from its events (use as, or inside, on_event)."""

    def __init__(self) -> None:
        self.turns: list[dict[str, Any]] = []
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.usage: list[dict[str, Any]] = []
        self.fallbacks: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.handoffs: list[dict[str, Any]] = []
        self._by_turn: dict[str, dict[str, Any]] = {}
        self._early_metrics: dict[str, dict[str, Any]] = {}

    def __call__(self, event: Event) -> None:
        t = event.type
        d = event.payload()
        if t == "turn.completed":
            self._turn(d)
        elif t == "turn.metrics":
            turn_id = str(d.get("turn_id") or "")
            latency = {k: v for k, v in d.items() if k != "turn_id" and v is not None}
            row = self._by_turn.get(turn_id)
            if row is not None:
                row["latency"] = latency
            elif len(self._early_metrics) < 64:
                self._early_metrics[turn_id] = latency
        elif t == "tool.called":
            self.tool_calls[str(d.get("call_id"))] = {"name": d.get("name"), "status": "running",
                                                      "latency_ms": None}
        elif t in ("tool.completed", "tool.failed"):
            rec = self.tool_calls.setdefault(str(d.get("call_id")), {"name": d.get("name")})
            rec["status"] = "ok" if t == "tool.completed" else str(d.get("status") or "error")
            rec["latency_ms"] = d.get("latency_ms")
        elif t == "session.usage":
            self.usage.append(d)
        elif t == "provider.fallback" and len(self.fallbacks) < MAX_COLLECTED_INCIDENTS:
            self.fallbacks.append({"at": event.ts, **{k: d.get(k) for k in (
                "kind", "from_provider", "to_provider", "error")}})
        elif t == "agent.handoff" and len(self.handoffs) < MAX_COLLECTED_INCIDENTS:
            self.handoffs.append({"at": event.ts, "agent": d.get("new_agent") or "",
                                  "agent_version": d.get("agent_version") or None,
                                  "fields": list(d.get("fields") or [])})
        elif t == "session.error" and len(self.errors) < MAX_COLLECTED_INCIDENTS:
            self.errors.append({"at": event.ts, **{k: d.get(k) for k in (
                "stage", "code", "message")}})

    def _turn(self, d: dict[str, Any]) -> None:
        if len(self.turns) >= MAX_COLLECTED_TURNS:
            return
        turn_id = str(d.get("turn_id") or "")
        latency = self._early_metrics.pop(turn_id, None)
        user_text, agent_text = d.get("user_text") or "", d.get("agent_text") or ""
        heard = d.get("heard_text")
        has_agent = bool(agent_text or heard)
        if user_text:
            self.turns.append({"role": "user", "text": user_text,
                               "latency": None if has_agent else latency})
        if has_agent:
            row = {"role": "assistant", "text": agent_text,
                   "heard_text": heard if heard is not None else agent_text,
                   "interrupted": bool(d.get("interrupted")), "latency": latency}
            self.turns.append(row)
            self._by_turn[turn_id] = row
        elif user_text:
            self._by_turn[turn_id] = self.turns[-1]

    def build(self, duration_s: float | None = None, summary: str | None = None) -> dict[str, Any]:
        return build_report(turns=self.turns, tool_calls=self.tool_calls.values(),
                            usage=self.usage, duration_s=duration_s, summary=summary,
                            provider_fallbacks=self.fallbacks, errors=self.errors,
                            handoffs=self.handoffs)


async def report_from_db(
    sessionmaker: async_sessionmaker[AsyncSession], session_id: str
) -> dict[str, Any] | None:
    """The report rebuilt from stored rows (None if the session does not exist)."""
    async with sessionmaker() as db:
        row = await sessions_repo.get(db, session_id)
        if row is None:
            return None
        return build_report(
            turns=await sessions_repo.list_turns(db, session_id),
            tool_calls=await sessions_repo.list_tool_calls(db, session_id),
            usage=await usage_repo.for_session(db, session_id),
            duration_s=row.duration_s,
        )


def transcript_text(
    transcript: list[dict[str, Any]], max_chars: int = SUMMARY_TRANSCRIPT_CHARS
) -> str:
    """Plain-text transcript for a summary prompt (what the caller heard, not what was
    generated); keeps the end of long calls, where outcomes usually are."""
    lines = []
    for e in transcript:
        who = "Caller" if e["role"] == "user" else "Agent"
        text = e.get("heard_text", e["text"]) if e["role"] == "assistant" else e["text"]
        if text:
            lines.append(f"{who}: {text}" + (" [interrupted]" if e.get("interrupted") else ""))
    out = "\n".join(lines)
    return out if len(out) <= max_chars else "…\n" + out[-max_chars:]


async def summarize(
    llm: Any,
    prompt: str,
    transcript: list[dict[str, Any]],
    *,
    timeout_s: float = 30.0,
    on_usage: Callable[[Any], None] | None = None,
) -> str | None:
    """Ask `llm` (anything with `.stream(messages)` yielding text/usage items) for a summary.

    Returns None on failure or timeout: a missing summary must never block the report.
    """
    text = transcript_text(transcript)
    if not text:
        return None
    messages = [
        {"role": "system", "content": prompt},
        {"role": "user", "content": f"Call transcript:\n{text}"},
    ]
    parts: list[str] = []

    async def run() -> None:
        async for item in llm.stream(messages):
            kind = getattr(item, "kind", None)
            if kind == "text":
                parts.append(item.text)
            elif kind == "usage" and on_usage is not None:
                on_usage(item)

    try:
        await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        log.warning("post-call summary timed out after %.0fs", timeout_s)
        return None
    except Exception as exc:
        log.warning("post-call summary failed: %s", exc)
        return None
    return "".join(parts).strip() or None


async def final_report(
    collector: ReportCollector,
    *,
    duration_s: float | None,
    llm: Any = None,
    summary_prompt: str | None = None,
    timeout_s: float = 30.0,
    on_usage: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """The report for `session.ended`: collected inputs plus, when the agent has a
    `post_call.summary_prompt` and an LLM is given, a summary (bounded by `timeout_s`)."""
    report = collector.build(duration_s=duration_s)
    if llm is not None and summary_prompt:
        summary = await summarize(llm, summary_prompt, report["transcript"],
                                  timeout_s=timeout_s, on_usage=on_usage)
        if summary is not None:
            report["summary"] = summary
        # The summary's own tokens are usage of this call too (on_usage fed them back into the
        # collector): total again so the report agrees with the stored usage records.
        report["usage"] = collector.build()["usage"]
    return report
