"""Latency of a simulated call: what the caller experienced, and what the server measured.

- `voice_to_voice`: from the simulator's own clock. For each stretch of caller audio, the time
  from the end of the caller's *speech* (the audio minus its trailing silence) to the first
  agent audio played after it: what a caller perceives, minus network and carrier delays.
- `fetch_session` + `turn_latency_lines`: the server's per-turn breakdown (the `turn.metrics` it
  stores on each answered turn), read from `GET /v1/sessions/{id}` with an API key.

Used by `phonebooth call` and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

# Where the caller's speech is taken to end: the last 10 ms window above -40 dBFS RMS.
_SILENCE_RMS = 0.01
_WINDOW_S = 0.01
# The server's turn.metrics fields, in pipeline order, with the labels printed for them.
STAGES = (
    ("vad_stop_to_eou_ms", "end of turn"),
    ("eou_to_stt_final_ms", "STT final"),
    ("llm_ttft_ms", "LLM first token"),
    ("tts_ttfb_ms", "TTS first audio"),
    ("first_audio_out_ms", "first audio out"),
    ("server_added_ms", "server-added"),
)


def trailing_silence_s(samples: np.ndarray, sample_rate: int) -> float:
    """Seconds of (near) silence at the end of `samples` (all of it if there is no speech)."""
    x = np.asarray(samples, dtype=np.float64) / 32768.0
    win = max(1, int(sample_rate * _WINDOW_S))
    n = len(x) // win
    if n == 0:
        return len(x) / sample_rate
    rms = np.sqrt((x[: n * win].reshape(n, win) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > _SILENCE_RMS)
    if loud.size == 0:
        return len(x) / sample_rate
    return (len(x) - (loud[-1] + 1) * win) / sample_rate


@dataclass(frozen=True, slots=True)
class VoiceToVoice:
    speech_end_s: float  # the caller's speech ended (seconds since the call started)
    agent_start_s: float  # the next agent audio began to play

    @property
    def ms(self) -> float:
        return round((self.agent_start_s - self.speech_end_s) * 1000.0, 1)


def voice_to_voice(caller_audio_ends: Sequence[float], agent_audio_starts: Sequence[float],
                   trailing_silence: float | Sequence[float] = 0.0) -> list[VoiceToVoice]:
    """Pair each end of caller audio with the first agent audio that started after it.

    `trailing_silence`: seconds of silence at the end of each stretch of caller audio (one
    value for all, or one per stretch), subtracted to find where the speech itself ended.
    A stretch the agent did not answer before the caller spoke again gives no pair."""
    ends = list(caller_audio_ends)
    if isinstance(trailing_silence, int | float):
        silences = [float(trailing_silence)] * len(ends)
    else:
        silences = [float(s) for s in trailing_silence] + [0.0] * len(ends)
    starts = sorted(agent_audio_starts)
    out: list[VoiceToVoice] = []
    for i, end in enumerate(ends):
        nxt = ends[i + 1] if i + 1 < len(ends) else float("inf")
        after = [s for s in starts if end <= s < nxt]
        if after:
            out.append(VoiceToVoice(end - silences[i], after[0]))
    return out


async def fetch_session(base_url: str, session_id: str, api_key: str, *,
                        wait_s: float = 5.0) -> dict[str, Any]:
    """The session with its turns, once the server has recorded its end (the event store
    writes shortly after the call closes). Raises httpx.HTTPError on failure."""
    headers = {"Authorization": f"Bearer {api_key}"}
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                 timeout=10.0, trust_env=False) as client:
        while True:
            resp = await client.get(f"/v1/sessions/{session_id}")
            if resp.status_code != 404:
                resp.raise_for_status()
                data: dict[str, Any] = resp.json()
                if data.get("status") != "active" or time.monotonic() > deadline:
                    return data
            elif time.monotonic() > deadline:
                resp.raise_for_status()
            await asyncio.sleep(0.2)


def answered_turns(session: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(what the caller said, what the agent answered, its latency breakdown) per answer."""
    out = []
    said = ""
    for t in session.get("turns") or []:
        if t.get("role") == "user":
            said = str(t.get("text") or "")
        elif t.get("role") == "assistant" and t.get("latency"):
            out.append((said, str(t.get("text") or ""), dict(t["latency"])))
            said = ""
    return out


def turn_latency_lines(session: dict[str, Any]) -> list[str]:
    """Human-readable lines: each answered turn and its latency breakdown (ms)."""
    lines = []
    for i, (said, answer, latency) in enumerate(answered_turns(session), 1):
        lines.append(f"turn {i}: caller {_quote(said)}")
        lines.append(f"        agent  {_quote(answer)}")
        parts = [f"{label} {latency[key]:.0f} ms" for key, label in STAGES
                 if isinstance(latency.get(key), int | float)]
        lines.append("        " + (" | ".join(parts) if parts else "no latency recorded"))
    return lines


def _quote(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
