"""The soft barge-in decision (pipelines/interruption.py), fact by fact."""

from __future__ import annotations

import pytest

from pipelines.interruption import BackchannelFilter, BargeFacts, InterruptionPolicy, words
from pipelines.settings import InterruptionSettings

POLICY = InterruptionPolicy(InterruptionSettings())


def facts(speech_ms: float, text: str = "", *, speaking: bool = True, expired: bool = False,
          awaiting: bool = False) -> BargeFacts:
    return BargeFacts(speech_ms=speech_ms, speaking=speaking, text=text, window_expired=expired,
                      awaiting_final=awaiting)


def test_words_tokenise_hyphenated_backchannels_as_one() -> None:
    assert words("Uh-huh, yeah. I SEE!") == ["uh-huh", "yeah", "i", "see"]


@pytest.mark.parametrize(
    ("text", "is_backchannel"),
    [("mhm", True), ("Mhm.", True), ("uh huh", True), ("uh-huh yeah okay", True),
     ("I see", True), ("got it, right", True), ("stop", False), ("yeah but wait", False),
     ("", False), ("see", False)],
)
def test_backchannel_filter(text: str, is_backchannel: bool) -> None:
    assert BackchannelFilter(InterruptionSettings().backchannels).is_backchannel(text) is (
        is_backchannel
    )


def test_commit_needs_both_min_speech_and_a_real_word() -> None:
    assert POLICY.decide(facts(250, "stop")) is None  # not long enough yet
    assert POLICY.decide(facts(300, "stop")) == "commit"
    assert POLICY.decide(facts(900, "")) is None  # no words yet: keep holding
    assert POLICY.decide(facts(900, "mhm")) is None
    assert POLICY.decide(facts(900, "mhm wait")) == "commit"


def test_short_speech_that_stops_is_a_false_interruption() -> None:
    assert POLICY.decide(facts(250, "", speaking=False)) == "resume"
    assert POLICY.decide(facts(250, "stop", speaking=False)) == "resume"


def test_after_speech_stops_wait_for_the_final_then_decide() -> None:
    assert POLICY.decide(facts(600, "", speaking=False, awaiting=True)) is None
    assert POLICY.decide(facts(600, "mhm", speaking=False)) == "resume"
    assert POLICY.decide(facts(600, "", speaking=False)) == "resume"
    assert POLICY.decide(facts(600, "", speaking=False, awaiting=True, expired=True)) == "resume"


def test_window_expiry_while_still_talking() -> None:
    # Nothing recognised yet (a batch STT): the caller keeps talking, so yield to them.
    assert POLICY.decide(facts(1400, "", expired=True)) == "commit"
    # Only backchannels recognised: not an attempt to take the turn.
    assert POLICY.decide(facts(1400, "yeah yeah", expired=True)) == "resume"


def test_min_words_and_zero_thresholds() -> None:
    two = InterruptionPolicy(InterruptionSettings(min_words=2))
    assert two.decide(facts(500, "stop")) is None
    assert two.decide(facts(500, "stop please")) == "commit"
    eager = InterruptionPolicy(InterruptionSettings(min_speech_ms=0, min_words=0))
    assert eager.decide(facts(0, "")) == "commit"
    assert eager.decide(facts(400, "mhm")) is None  # still never on a backchannel
    custom = InterruptionPolicy(InterruptionSettings(backchannels=["ja", "genau"]))
    assert custom.decide(facts(500, "genau ja")) is None
    assert custom.decide(facts(500, "mhm")) == "commit"
