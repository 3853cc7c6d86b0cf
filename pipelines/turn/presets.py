"""Semantic-VAD presets: one word for how eager the agent is to take the turn.

Plivo AgentStack agents declare `semantic_vad: "low" | "medium" | "high" | "auto"` or a preset
with overrides (`{"eagerness": "high", "min_interruption_duration_ms": 200}`). Each preset sets
the knobs below; a knob the same config sets explicitly (`vad.stop_ms`, `turn.max_wait_ms`, ...)
wins over the preset, and an override in the `semantic_vad` object wins over both.

| knob                                 | override name                 | low  | medium | high |
|--------------------------------------|-------------------------------|------|--------|------|
| vad.stop_ms                          | vad_stop_ms                   | 300  | 200    | 150  |
| turn.threshold                       | end_of_turn_threshold         | 0.6  | 0.5    | 0.4  |
| turn.min_wait_ms                     | min_turn_delay_ms             | 500  | 300    | 200  |
| turn.max_wait_ms                     | max_turn_delay_ms             | 1800 | 1200   | 800  |
| interruption.min_speech_ms           | min_interruption_duration_ms  | 500  | 300    | 200  |
| interruption.min_words               | min_interruption_words        | 2    | 1      | 1    |
| interruption.false_interruption_timeout_ms | false_interruption_timeout_ms | 2000 | 1500 | 1000 |
| interruption.hold                    | interruption_hold             | duck | pause  | pause |

"medium" is the defaults. "auto" starts as medium and adapts within the call
(`AdaptiveTurnDelay`): a caller who resumes after a pause the agent nearly took as the end of
the turn gets longer waits; a caller whose turns keep ending clearly gets shorter ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pipelines.settings import SemanticVad

# override name -> (settings section, knob)
KNOBS: dict[str, tuple[str, str]] = {
    "vad_stop_ms": ("vad", "stop_ms"),
    "end_of_turn_threshold": ("turn", "threshold"),
    "min_turn_delay_ms": ("turn", "min_wait_ms"),
    "max_turn_delay_ms": ("turn", "max_wait_ms"),
    "min_interruption_duration_ms": ("interruption", "min_speech_ms"),
    "min_interruption_words": ("interruption", "min_words"),
    "false_interruption_timeout_ms": ("interruption", "false_interruption_timeout_ms"),
    "interruption_hold": ("interruption", "hold"),
}

Knob = float | int | str

PRESETS: dict[str, dict[str, Knob]] = {
    "low": {"vad_stop_ms": 300, "end_of_turn_threshold": 0.6, "min_turn_delay_ms": 500,
            "max_turn_delay_ms": 1800, "min_interruption_duration_ms": 500,
            "min_interruption_words": 2, "false_interruption_timeout_ms": 2000,
            "interruption_hold": "duck"},
    "medium": {"vad_stop_ms": 200, "end_of_turn_threshold": 0.5, "min_turn_delay_ms": 300,
               "max_turn_delay_ms": 1200, "min_interruption_duration_ms": 300,
               "min_interruption_words": 1, "false_interruption_timeout_ms": 1500,
               "interruption_hold": "pause"},
    "high": {"vad_stop_ms": 150, "end_of_turn_threshold": 0.4, "min_turn_delay_ms": 200,
             "max_turn_delay_ms": 800, "min_interruption_duration_ms": 200,
             "min_interruption_words": 1, "false_interruption_timeout_ms": 1000,
             "interruption_hold": "pause"},
}
PRESETS["auto"] = dict(PRESETS["medium"])


def preset_knobs(value: Any) -> dict[str, Knob] | None:
    """The knob values a `semantic_vad` value stands for (preset, then its overrides); None
    when the value is absent or not a valid preset (field validation reports that)."""
    if value is None:
        return None
    if isinstance(value, str):
        base = PRESETS.get(value)
        return dict(base) if base is not None else None
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        return None
    base = PRESETS.get(value.get("eagerness", "medium"))
    if base is None:
        return None
    knobs = dict(base)
    for name, v in value.items():
        if name in KNOBS and isinstance(v, int | float | str) and not isinstance(v, bool):
            knobs[name] = v
    return knobs


def apply_preset(data: Any) -> Any:
    """ConversationSettings input with the preset's knobs filled in where the input does not
    set them itself (a model-level "before" validator: it sees what was really given)."""
    if not isinstance(data, dict):
        return data
    knobs = preset_knobs(data.get("semantic_vad"))
    if knobs is None:
        return data
    out = dict(data)
    for name, value in knobs.items():
        section, key = KNOBS[name]
        given = out.get(section)
        if isinstance(given, BaseModel):
            given = given.model_dump(exclude_unset=True)
        if given is None:
            given = {}
        if not isinstance(given, dict):
            return data  # not a mapping: let field validation say what is wrong
        if key not in given:
            out[section] = {**given, key: value}
        else:
            out[section] = given
    return out


def preset_name(value: str | SemanticVad | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else value.eagerness


@dataclass(slots=True)
class AdaptiveTurnDelay:
    """`auto`: scales the turn's silence budget between `low` and `high` within the call.

    - The caller went on speaking after a pause longer than half the longest budget: they
      pause mid-thought, wait longer next time (x1.25).
    - A turn ended by a confident model with a short utterance: they answer crisply, wait a
      little less (x0.9).
    The scale stays within [0.67, 1.5] (high's and low's max waits relative to medium's)."""

    scale: float = 1.0
    low: float = 0.67
    high: float = 1.5

    def resumed_after(self, pause_ms: float, budget_ms: float) -> None:
        if budget_ms > 0 and pause_ms > budget_ms * 0.5:
            self.scale = min(self.high, self.scale * 1.25)

    def ended_confidently(self, speech_ms: float) -> None:
        if speech_ms < 1500:
            self.scale = max(self.low, self.scale * 0.9)

    def budget(self, budget_ms: float) -> float:
        return budget_ms * self.scale


def patch_base(config: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The stored config a merge patch applies to. A patch that changes `semantic_vad`
    re-derives the knobs the preset governs: they are dropped from the stored (fully expanded)
    config so the new preset fills them, unless the patch sets them itself."""
    if "semantic_vad" not in patch or patch.get("semantic_vad") == config.get("semantic_vad"):
        return config
    out = dict(config)
    for section, key in KNOBS.values():
        stored = out.get(section)
        if isinstance(stored, dict) and key in stored:
            out[section] = {k: v for k, v in stored.items() if k != key}
    return out
