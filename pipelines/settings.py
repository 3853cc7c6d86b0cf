"""Per-agent turn-taking settings consumed by the engine.

Defaults are the ones docs/turn-taking.md explains. They are plain pydantic models so the service
can embed them in an agent's config and validate them when the agent is saved.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipelines.audio.backgrounds import background


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VadSettings(_Strict):
    engine: str = Field("silero", pattern="^(silero|webrtc)$")
    threshold: float = Field(0.5, gt=0, lt=1)
    start_ms: int = Field(200, ge=20, le=2000)
    stop_ms: int = Field(200, ge=20, le=5000)
    # webrtcvad aggressiveness 0..3 (only for engine=webrtc)
    webrtc_mode: int = Field(2, ge=0, le=3)


class TurnSettings(_Strict):
    # "smart_turn": audio end-of-turn model; "vad": end the turn at VAD stop.
    detector: str = Field("smart_turn", pattern="^(smart_turn|vad)$")
    # P(turn complete) at or above this ends the turn at once.
    threshold: float = Field(0.5, gt=0, lt=1)
    # Below the threshold the silence to wait (from the end of speech, VAD stop included) grows
    # from min_wait_ms (P just under the threshold) to max_wait_ms (P = 0, or a transcript that
    # ends mid-thought: "and", "um", a number or a spelling still going on).
    min_wait_ms: int = Field(300, ge=0, le=20000)
    max_wait_ms: int = Field(1200, ge=0, le=20000)
    # While waiting, re-run the model every this many ms of continued silence.
    recheck_ms: int = Field(400, ge=50, le=5000)
    # How long to wait for the STT's final transcript after the end-of-turn decision.
    stt_final_timeout_ms: int = Field(1500, ge=50, le=10000)
    # Start the answer (LLM, and TTS of its first sentence) on the transcript as soon as the
    # caller pauses; it plays only once the turn is over, and is thrown away if the caller goes
    # on or the final transcript differs.
    preemptive_generation: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> TurnSettings:
        if self.min_wait_ms > self.max_wait_ms:
            raise ValueError("min_wait_ms must not exceed max_wait_ms")
        return self


InterruptionHold = Literal["pause", "duck"]


class InterruptionSettings(_Strict):
    enabled: bool = True
    min_speech_ms: int = Field(300, ge=0, le=5000)
    min_words: int = Field(1, ge=0, le=20)
    # A soft-paused agent resumes if no interruption is committed within this window.
    false_interruption_timeout_ms: int = Field(1500, ge=100, le=10000)
    # What the caller hears while their speech is being judged. "pause": the agent goes quiet
    # at once (a real interruption is yielded to soonest; a "mhm" costs a gap until it is
    # judged). "duck": the agent talks on at DUCK_GAIN and goes quiet once the interruption is
    # committed (a "mhm" costs nothing; a real one is yielded to when its words are in).
    hold: InterruptionHold = "pause"
    backchannels: list[str] = Field(
        default_factory=lambda: [
            "mhm", "mm", "mmhmm", "uh-huh", "uh huh", "uhhuh", "yeah", "yep", "yes", "okay",
            "ok", "right", "sure", "i see", "got it", "hmm", "ah", "oh",
        ]
    )


class IdleSettings(_Strict):
    timeout_s: float = Field(8.0, gt=0, le=600)
    max_prompts: int = Field(2, ge=0, le=10)
    prompt: str = "Are you still there?"
    goodbye: str = "It seems you've stepped away. Goodbye!"


SemanticVadPreset = Literal["low", "medium", "high", "auto"]


class SemanticVad(_Strict):
    """A preset plus overrides: `{"eagerness": "high", "min_interruption_duration_ms": 200}`.
    The knobs are those of `pipelines.turn.presets.KNOBS`."""

    eagerness: SemanticVadPreset = "medium"
    vad_stop_ms: int | None = Field(None, ge=20, le=5000)
    end_of_turn_threshold: float | None = Field(None, gt=0, lt=1)
    min_turn_delay_ms: int | None = Field(None, ge=0, le=20000)
    max_turn_delay_ms: int | None = Field(None, ge=0, le=20000)
    min_interruption_duration_ms: int | None = Field(None, ge=0, le=5000)
    min_interruption_words: int | None = Field(None, ge=0, le=20)
    false_interruption_timeout_ms: int | None = Field(None, ge=100, le=10000)
    interruption_hold: InterruptionHold | None = None


class ConversationSettings(_Strict):
    """Everything the per-call state machine needs besides providers and prompt."""

    # Turn-taking presets named as Plivo AgentStack names them (pipelines/turn/presets.py):
    # they set the vad/turn/interruption knobs below that the same config does not set itself.
    semantic_vad: SemanticVadPreset | SemanticVad | None = None

    @field_validator("semantic_vad", mode="before")
    @classmethod
    def _known_preset(cls, v: Any) -> Any:
        # One clear error naming the field rather than one per member of the union.
        if isinstance(v, str) and v not in ("low", "medium", "high", "auto"):
            raise PydanticCustomError(
                "semantic_vad", "unknown preset '{value}' (expected low, medium, high or auto)",
                {"value": v})
        if isinstance(v, dict):
            return SemanticVad.model_validate(v)
        return v
    vad: VadSettings = VadSettings()
    turn: TurnSettings = TurnSettings()
    interruption: InterruptionSettings = InterruptionSettings()
    idle: IdleSettings = IdleSettings()
    response_timeout_s: float = Field(6.0, gt=0, le=120)
    apology: str = "Sorry, I'm having trouble right now. Could you say that again?"
    # Answers lost in a row to provider failures (every fallback exhausted, or the watchdog)
    # before the call is ended — with `failure_goodbye`, reason "provider_error".
    max_failed_replies: int = Field(2, ge=1, le=10)
    # Also what the caller hears when the TTS itself is down: it is pre-rendered for that case.
    failure_goodbye: str = ("I'm sorry, we're having technical difficulties. "
                            "Please call back later. Goodbye.")
    max_call_duration_s: float = Field(1800.0, gt=0)
    max_duration_goodbye: str = "We have reached the time limit for this call. Goodbye!"
    max_context_items: int = Field(50, ge=4, le=1000)
    thinking_audio: bool = False
    # What plays while the agent thinks (with thinking_audio): a built-in sound (hold_music,
    # office, hum) or a base64 WAV; by default a soft pulse.
    thinking_sound: str | None = Field(None, min_length=1)
    # LLM ↔ tool round trips per answer; the last round is offered no tools.
    max_tool_rounds: int = Field(5, ge=1, le=20)
    # Safety net for a tool executor without its own timeout.
    tool_timeout_s: float = Field(30.0, gt=0, le=600)
    # Keypad digits are collected until this gap (or '#') and then answered as one turn.
    dtmf_inter_digit_ms: int = Field(1500, ge=0, le=10000)

    @field_validator("thinking_sound")
    @classmethod
    def _playable(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                background(v)
            except ValueError as exc:
                raise ValueError(str(exc).removeprefix("sound: ")) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _apply_semantic_vad(cls, data: Any) -> Any:
        # Imported here: the presets module builds on the settings classes above.
        from pipelines.turn.presets import apply_preset

        return apply_preset(data)
