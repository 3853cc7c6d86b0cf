"""Scoring one labelled caller item from what the far end (the simulated Plivo) saw.

Pure functions over a log, so they are unit-tested without a server. All times are seconds on
the driver's monotonic clock. The log of a call:
- `plays`: every `playAudio` frame as (arrival, far-end start, duration, voiced): the far end
  plays frames back to back, so a frame starts at the later of its arrival and the end of the
  audio queued before it;
- `clears`: arrival times of `clearAudio` (the far end drops the audio not yet played).

Definitions (issue 13):
- false cut-off: agent speech is heard after the caller's first word and before the labelled
  turn end;
- dead air: turn end → the first agent speech heard at or after it (0 if the agent is already
  talking); a missed end of turn is dead air over `MISSED_S` (or no answer at all);
- v2v: turn end → the first agent speech heard after it, for items without a false cut-off;
- agent stop (backchannels and noise): a silence of more than `STOP_GAP_S` inside the agent's
  speech after the item's onset, or the answer ending more than `STOP_GAP_S` short of a full
  answer (it stopped and stayed silent). A `clearAudio` alone is not a stop: an engine may clear
  the far end's buffer when it holds and re-send the audio when it resumes; the caller hears a
  stop only if the speech pauses;
- barge-in: onset of an interruption → `clearAudio` (clear), and → the end of the agent speech
  the caller hears (heard). The agent yielded if that speech ends within `BARGE_LIMIT_S` and
  no agent speech is heard again until the interruption's voice ends; otherwise it is
  "not stopped" (it talked on, or resumed over the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

MISSED_S = 1.5
STOP_GAP_S = 0.3
BARGE_LIMIT_S = 3.0
# Frames closer than this are one stretch of speech. A hole this short is not heard as the agent
# stopping: a ducked hold clears the far end's buffer and re-sends that audio softer at once, which
# leaves ~18 ms (measured) between the last frame before the clear and the first one after it.
MERGE_S = 0.05


@dataclass(frozen=True)
class Play:
    arrival: float
    start: float
    duration: float
    voiced: bool


def heard_speech(plays: list[Play], clears: list[float]) -> list[tuple[float, float]]:
    """The stretches of voiced agent audio the caller hears, merged, with clears applied."""
    spans: list[list[float]] = []
    events: list[tuple[float, int, Play | None]] = [(p.arrival, 1, p) for p in plays]
    events += [(t, 0, None) for t in clears]
    for t, _, p in sorted(events, key=lambda e: (e[0], e[1])):
        if p is None:  # clear: nothing queued after t plays
            spans = [[a, min(b, t)] for a, b in spans if a < t]
            continue
        if not p.voiced:
            continue
        a, b = p.start, p.start + p.duration
        if spans and a <= spans[-1][1] + MERGE_S:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    return [(a, b) for a, b in spans if b > a]


@dataclass
class TurnScore:
    cut_off: bool
    dead_air_s: float | None  # None: no agent speech at all after the turn end
    v2v_s: float | None
    missed: bool


def score_turn(speech: list[tuple[float, float]], onset: float, turn_end: float,
               until: float) -> TurnScore:
    """A turn item: the caller spoke from `onset` to `turn_end` while the agent was silent."""
    cut_off = any(a < turn_end and b > onset for a, b in speech)
    after = [(a, b) for a, b in speech if b > turn_end and a <= until]
    dead = None if not after else max(0.0, after[0][0] - turn_end)
    v2v = None
    if not cut_off:
        first = next((a for a, _ in speech if a >= turn_end and a <= until), None)
        v2v = None if first is None else first - turn_end
    return TurnScore(cut_off=cut_off, dead_air_s=dead, v2v_s=v2v,
                     missed=dead is None or dead > MISSED_S)


@dataclass
class StopScore:
    stopped: bool
    cleared: bool
    max_gap_s: float  # longest silence inside the agent's speech after the onset
    shortfall_s: float  # full answer minus the answer heard (≥ 0)
    speech_s: float  # agent speech heard in the window


def score_overlap(speech: list[tuple[float, float]], clears: list[float], onset: float,
                  answer_start: float, until: float, full_answer_s: float | None) -> StopScore:
    """A backchannel or noise item, spoken at `onset` into the answer that began at
    `answer_start`: did the agent stop (it should not)?"""
    cleared = any(onset <= t <= until for t in clears)
    mine = [(max(a, answer_start), min(b, until)) for a, b in speech
            if b > answer_start and a < until]
    gaps = [b0 - a1 for (_, a1), (b0, _) in pairwise(mine) if a1 >= onset]
    max_gap = max(gaps, default=0.0)
    heard = sum(b - a for a, b in mine)
    shortfall = max(0.0, full_answer_s - heard) if full_answer_s is not None else 0.0
    stopped = max_gap > STOP_GAP_S or shortfall > STOP_GAP_S
    return StopScore(stopped=stopped, cleared=cleared, max_gap_s=max_gap,
                     shortfall_s=shortfall, speech_s=heard)


@dataclass
class BargeScore:
    clear_s: float | None  # onset → clearAudio
    heard_s: float | None  # onset → the caller stops hearing the agent
    stopped: bool


def score_barge(speech: list[tuple[float, float]], clears: list[float], onset: float,
                voice_end: float, until: float) -> BargeScore:
    """An interruption spoken from `onset` to `voice_end`: how fast did the agent yield?"""
    clear = next((t - onset for t in sorted(clears) if onset <= t <= until), None)
    # The stretch of agent speech running at the onset (or the first one after it, if the
    # onset fell in a gap between sentences) ends when the caller stops hearing the agent.
    current = next(((a, b) for a, b in speech if b > onset and a < onset + BARGE_LIMIT_S), None)
    heard = 0.0 if current is None else max(0.0, current[1] - onset)
    stop_at = onset + heard
    resumed = any(stop_at + MERGE_S < a < voice_end for a, _ in speech)
    stopped = heard <= BARGE_LIMIT_S and not resumed
    return BargeScore(clear_s=clear, heard_s=heard, stopped=stopped)


@dataclass
class Summary:
    turn_items: int = 0
    cut_offs: int = 0
    missed: int = 0
    overlap_items: int = 0
    stops: int = 0
    barge_items: int = 0
    barges_not_stopped: int = 0
    v2v_ms: list[float] = field(default_factory=list)
    clear_ms: list[float] = field(default_factory=list)
    heard_ms: list[float] = field(default_factory=list)
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def pct(n: int, d: int) -> float | None:
            return None if not d else round(100.0 * n / d, 1)

        return {
            "turn_items": self.turn_items, "overlap_items": self.overlap_items,
            "barge_items": self.barge_items,
            "false_cut_off_pct": pct(self.cut_offs, self.turn_items), "cut_offs": self.cut_offs,
            "missed_pct": pct(self.missed, self.turn_items), "missed": self.missed,
            "backchannel_noise_stop_pct": pct(self.stops, self.overlap_items),
            "stops": self.stops,
            "barges_not_stopped": self.barges_not_stopped,
            "barge_clear_ms": quantiles(self.clear_ms), "barge_heard_ms": quantiles(self.heard_ms),
            "v2v_ms": quantiles(self.v2v_ms), "by_category": self.by_category,
        }


def quantiles(xs: list[float]) -> dict[str, float | int | None]:
    if not xs:
        return {"n": 0, "p50": None, "p95": None}
    a = np.asarray(xs, dtype=np.float64)
    return {"n": len(xs), "p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1)}


def summarize(results: list[dict[str, Any]]) -> Summary:
    """Aggregate per-item results (`score` dicts as bench/turntaking.py writes them)."""
    s = Summary()
    for r in results:
        cat = s.by_category.setdefault(r["category"], {"n": 0, "bad": 0})
        sc = r.get("score")
        if sc is None:  # not run (the carrier got no answer): counted nowhere
            continue
        cat["n"] += 1
        if r["kind"] == "turn":
            s.turn_items += 1
            s.cut_offs += sc["cut_off"]
            s.missed += sc["missed"]
            cat["bad"] += bool(sc["cut_off"] or sc["missed"])
            if sc["v2v_s"] is not None:
                s.v2v_ms.append(sc["v2v_s"] * 1000.0)
        elif r["kind"] == "overlap":
            s.overlap_items += 1
            s.stops += sc["stopped"]
            cat["bad"] += bool(sc["stopped"])
        else:
            s.barge_items += 1
            s.barges_not_stopped += not sc["stopped"]
            cat["bad"] += not sc["stopped"]
            if sc["clear_s"] is not None:
                s.clear_ms.append(sc["clear_s"] * 1000.0)
            if sc["heard_s"] is not None and sc["stopped"]:
                s.heard_ms.append(sc["heard_s"] * 1000.0)
    return s
