"""The post-call report: pure computation, from events, from the database, with a summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.calls.report import (
    ReportCollector,
    build_report,
    final_report,
    percentile,
    report_from_db,
    summarize,
    transcript_text,
)
from app.db.engine import Database
from app.events.service import EventsService
from providers.base import TextDelta, Usage
from tests.events.conftest import call_events, make_session


def test_percentiles() -> None:
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05)


def test_build_report_from_rows() -> None:
    turns = [
        {"role": "assistant", "text": "Hi!", "heard_text": "Hi!", "interrupted": False,
         "latency": None},
        {"role": "user", "text": "hello", "latency": None},
        {"role": "assistant", "text": "How can I help you today?", "heard_text": "How can",
         "interrupted": True, "latency": {"llm_ttft_ms": 400.0, "first_audio_out_ms": 700.0}},
        {"role": "user", "text": "bye"},
        {"role": "assistant", "text": "Bye!", "heard_text": None, "interrupted": False,
         "latency": {"llm_ttft_ms": 200.0, "first_audio_out_ms": 500.0, "note": "x"}},
        {"role": "system", "text": "ignored"},
    ]
    tools = [{"name": "a", "status": "ok", "latency_ms": 120.0},
             {"name": "b", "status": "timeout", "latency_ms": 5000.0},
             {"name": "a", "status": "ok", "latency_ms": None}]
    usage = [{"kind": "llm", "provider": "p", "model": "m", "metric": "input_tokens",
              "quantity": 10}, {"kind": "llm", "provider": "p", "model": "m",
                                "metric": "input_tokens", "quantity": 15},
             {"kind": "tts", "provider": "q", "model": "", "metric": "characters",
              "quantity": 30}]
    r = build_report(turns=turns, tool_calls=tools, usage=usage, duration_s=42.1234)
    assert r["duration_s"] == 42.123
    assert (r["turns"], r["user_turns"], r["agent_turns"], r["interruptions"]) == (5, 2, 3, 1)
    assert r["transcript"][2] == {"role": "assistant", "text": "How can I help you today?",
                                  "heard_text": "How can", "interrupted": True}
    assert r["transcript"][4]["heard_text"] == "Bye!"
    assert r["tool_calls"]["total"] == 3
    assert r["tool_calls"]["by_status"] == {"ok": 2, "timeout": 1}
    assert r["usage"] == [
        {"kind": "llm", "provider": "p", "model": "m", "metric": "input_tokens",
         "quantity": 25.0},
        {"kind": "tts", "provider": "q", "model": "", "metric": "characters", "quantity": 30.0},
    ]
    assert r["latency_ms"] == {
        "first_audio_out_ms": {"p50": 600.0, "p95": 690.0, "n": 2},
        "llm_ttft_ms": {"p50": 300.0, "p95": 390.0, "n": 2},
    }
    assert "summary" not in r
    assert build_report(turns=[])["latency_ms"] == {}


async def test_collector_and_database_agree(database: Database, events: EventsService) -> None:
    sid, agent_id = await make_session(database)
    collector = ReportCollector()
    for e in call_events(sid, agent_id):
        collector(e)
        events.publish(e)
    await events.flush()
    from_events = collector.build(duration_s=12.5)
    from_db = await report_from_db(database.sessionmaker, sid)
    assert from_db is not None
    for key in ("turns", "user_turns", "agent_turns", "interruptions", "transcript", "usage",
                "latency_ms"):
        assert from_events[key] == from_db[key], key
    assert from_events["tool_calls"]["by_status"] == from_db["tool_calls"]["by_status"] \
        == {"ok": 1}
    assert from_events["interruptions"] == 1 and from_events["turns"] == 5
    assert from_events["latency_ms"]["llm_ttft_ms"]["n"] == 2
    assert await report_from_db(database.sessionmaker, "nope") is None


class FakeLLM:
    """Anything with .stream(messages) yielding text/usage items, as the providers do."""

    def __init__(self, reply: str, delay_s: float = 0.0, fail: bool = False) -> None:
        self.reply, self.delay_s, self.fail = reply, delay_s, fail
        self.messages: list[dict[str, Any]] = []

    async def stream(self, messages: list[dict[str, Any]], tools: Any = None,
                     settings: Any = None) -> AsyncIterator[Any]:
        self.messages = messages
        if self.fail:
            raise RuntimeError("provider down")
        await asyncio.sleep(self.delay_s)
        for word in self.reply.split(" "):
            yield TextDelta(word + " ")
        yield Usage("fake", "m", "output_tokens", 7)


async def test_summary() -> None:
    transcript = [{"role": "user", "text": "my order is late"},
                  {"role": "assistant", "text": "Sorry! It ships tomorrow, I promise.",
                   "heard_text": "Sorry! It ships tomorrow", "interrupted": True}]
    llm = FakeLLM("Caller asked about a late order; agent said it ships tomorrow.")
    usage: list[Any] = []
    summary = await summarize(llm, "Summarise the call in one sentence.", transcript,
                              on_usage=usage.append)
    assert summary == "Caller asked about a late order; agent said it ships tomorrow."
    assert llm.messages[0] == {"role": "system", "content": "Summarise the call in one sentence."}
    assert "Agent: Sorry! It ships tomorrow [interrupted]" in llm.messages[1]["content"]
    assert [u.quantity for u in usage] == [7]

    assert await summarize(FakeLLM("x", fail=True), "p", transcript) is None
    assert await summarize(FakeLLM("x", delay_s=5), "p", transcript, timeout_s=0.05) is None
    assert await summarize(FakeLLM("x"), "p", []) is None
    report = build_report(turns=[], summary="short")
    assert report["summary"] == "short"


def test_transcript_text_keeps_the_end_of_long_calls() -> None:
    transcript = [{"role": "user", "text": f"line {i}"} for i in range(1000)]
    text = transcript_text(transcript, max_chars=100)
    assert text.startswith("…\n") and text.endswith("Caller: line 999")


async def test_final_report_adds_the_summary() -> None:
    collector = ReportCollector()
    for e in call_events("s"):
        collector(e)
    report = await final_report(collector, duration_s=3.0, llm=FakeLLM("All good."),
                                summary_prompt="Summarise.")
    assert report["summary"] == "All good." and report["duration_s"] == 3.0
    plain = await final_report(collector, duration_s=3.0, llm=FakeLLM("x"))
    assert "summary" not in plain
