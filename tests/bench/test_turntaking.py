"""The turn-taking benchmark's labelled caller set, its audio generator, its scripted STT and its
scoring (bench/caller_set.py, bench/scripted_stt.py, bench/turntaking_metrics.py). The benchmark
itself is run by hand (bench/README.md); these check that what it counts is what it claims."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import caller_set as cs
from bench import turntaking_metrics as tm
from bench.scripted_stt import ScriptedDeepgram


@pytest.fixture(scope="module")
def labels() -> cs.CallerSet:
    return cs.load_set()


def test_set_covers_what_issue_13_asks_for(labels: cs.CallerSet) -> None:
    items = labels.items
    assert len(items) >= 60
    cats = Counter(it.category for it in items)
    for cat in (*cs.TURN_CATEGORIES, *cs.DURING_CATEGORIES):
        assert cats[cat] >= 5, cat
    voices = {it.voice for it in items if it.voice != "synth"}
    assert sum(v.startswith("piper:") for v in voices) >= 2
    assert sum(v.startswith("espeak:") for v in voices) >= 3
    assert len({it.rate for it in items}) >= 3
    noisy = [it for it in items if it.noise]
    assert 10 <= len(noisy) < len(items)
    # Mid-sentence pauses of 400–900 ms; digits, dates and spellings paused between groups.
    for it in items:
        if it.category == "pause":
            assert any(400 <= p.pause_after_ms <= 900 for p in it.pieces), it.id
        if it.category == "digits":
            assert len(it.pieces) >= 2, it.id
    words = {w.strip(".,").lower() for it in items if it.category == "backchannel"
             for w in it.text.split()}
    assert {"mhm", "okay", "right", "yeah"} <= words
    assert {s.sound for it in items if it.category == "noise" for s in it.pieces} >= {
        "cough", "clatter"}
    # Labels: only interruptions should stop the agent; turn items end after their last piece.
    for it in items:
        assert it.should_stop_agent == (it.category == "interruption"), it.id
        if it.is_turn:
            assert it.turn_ends_after_piece == len(it.pieces) - 1
        else:
            assert it.agent_speaking_ms is not None


@pytest.mark.parametrize(("patch", "field"), [
    ({"category": "smalltalk"}, "category"),
    ({"pieces": [{"text": "Hi.", "sound": "cough", "pause_after_ms": 0}]}, "pieces[0]"),
    ({"pieces": [{"text": "Hi.", "pause_after_ms": 300}]}, "pieces[0].pause_after_ms"),
    ({"rate": 5}, "rate"),
    ({"noise": {"kind": "jet", "snr_db": 10}}, "noise"),
    ({"should_stop_agent": True}, "should_stop_agent"),
    ({"turn_ends_after_piece": None}, "turn_ends_after_piece"),
])
def test_bad_labels_name_the_item_and_field(tmp_path: Path, patch: dict, field: str) -> None:
    doc = json.loads(cs.LABELS.read_text())
    doc["items"] = [{**doc["items"][0], **patch}]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(cs.LabelError) as err:
        cs.load_set(path)
    assert "complete-01" in str(err.value) and repr(field) in str(err.value)


def test_word_times_share_the_span_and_end_with_it() -> None:
    ws = cs.word_times("My number is four one five", (100.0, 1300.0))
    times = [t for t, _ in ws]
    assert [w for _, w in ws] == "My number is four one five".split()
    assert times == sorted(times) and times[0] > 100.0 and times[-1] == 1300.0


def test_sounds_and_noise_are_deterministic_and_levelled() -> None:
    for kind in cs.SOUNDS:
        a = cs.synth_sound(kind, np.random.default_rng(1))
        b = cs.synth_sound(kind, np.random.default_rng(1))
        assert np.array_equal(a, b) and 0.05 < float(np.abs(a).max()) <= 1.0, kind
    for kind in cs.NOISES:
        x = cs.background(kind, 16000, np.random.default_rng(2), level_rms=0.01)
        assert float(np.sqrt(np.mean(x**2))) == pytest.approx(0.01, rel=1e-3), kind


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng and sox are Debian packages (apt-get install espeak-ng sox)")
def test_render_an_item_with_a_pause_to_telephone_audio(tmp_path: Path,
                                                        labels: cs.CallerSet) -> None:
    item = next(it for it in labels.items if it.id == "pause-02")  # espeak-ng, 600 ms pause
    r = cs.render(item, tmp_path)
    assert len(r.pieces_ms) == 2
    gap = r.pieces_ms[1][0] - r.pieces_ms[0][1]
    assert 600 <= gap <= 660  # the labelled silence, plus the trimmed pieces' quiet edges
    assert r.duration_ms == pytest.approx(r.end_ms + 40 + cs.LEAD_MS, abs=25)
    from pipelines.audio.g711 import ulaw_decode

    pcm = ulaw_decode(r.ulaw).astype(np.float64)
    mid = pcm[int(r.pieces_ms[0][1] / 1000 * 8000) + 80:int(r.pieces_ms[1][0] / 1000 * 8000) - 80]
    assert np.sqrt(np.mean(mid**2)) < 50  # the pause is silent (no noise on this item)
    assert r.words[-1][1] == "Monday?" and r.words[-1][0] == pytest.approx(r.end_ms)
    again = cs.render(item, tmp_path)  # from the cache
    assert again.ulaw == r.ulaw and again.pieces_ms == [tuple(p) for p in r.pieces_ms]


def test_scripted_stt_transcribes_only_what_has_been_said() -> None:
    stt = ScriptedDeepgram()
    now = time.monotonic()
    stt.say([(now - 1.0, "I"), (now - 0.8, "would"), (now - 0.5, "like"),
             (now + 5.0, "this"), (now + 5.2, "week.")])
    assert stt._utterance(final=False) == "I would like"
    assert stt._utterance(final=True) == "I would like"  # a Finalize in the pause: first half
    assert stt._utterance(final=True) == ""  # nothing new said (a cough)
    stt.say([(now - 0.1, "mhm")])
    assert stt._utterance(final=True) == "mhm"


def _plays(*spans: tuple[float, float], step: float = 0.02) -> list[tm.Play]:
    out = []
    for a, b in spans:
        t = a
        while t < b - 1e-9:
            out.append(tm.Play(t, t, step, True))
            t += step
    return out


def test_heard_speech_merges_frames_and_applies_clears() -> None:
    plays = _plays((1.0, 2.0), (3.0, 4.0))
    assert tm.heard_speech(plays, []) == [pytest.approx((1.0, 2.0)), pytest.approx((3.0, 4.0))]
    # Frames queued ahead at the far end are dropped by a clear.
    queued = [tm.Play(1.0, 1.0 + i * 0.02, 0.02, True) for i in range(100)]  # 1.0..3.0
    assert tm.heard_speech(queued, [1.5]) == [pytest.approx((1.0, 1.5))]


def test_score_turn() -> None:
    # Caller 0.0–2.0 with a pause; agent answered in the pause at 1.2: a false cut-off.
    s = tm.score_turn([(1.2, 1.4), (2.9, 5.0)], onset=0.0, turn_end=2.0, until=6.0)
    assert s.cut_off and s.v2v_s is None and s.dead_air_s == pytest.approx(0.9)
    assert not s.missed
    s = tm.score_turn([(2.8, 5.0)], onset=0.0, turn_end=2.0, until=6.0)
    assert not s.cut_off and s.v2v_s == pytest.approx(0.8) and not s.missed
    s = tm.score_turn([(3.6, 5.0)], onset=0.0, turn_end=2.0, until=6.0)
    assert s.missed and s.v2v_s == pytest.approx(1.6)
    assert tm.score_turn([], onset=0.0, turn_end=2.0, until=6.0).missed


def test_score_overlap() -> None:
    full = 3.0
    # Talked straight through the backchannel at 1.5.
    s = tm.score_overlap([(1.0, 4.0)], [], 1.5, 1.0, 6.0, full)
    assert not s.stopped
    # Held for 0.6 s, then resumed where it was.
    s = tm.score_overlap([(1.0, 1.8), (2.4, 4.6)], [1.6], 1.5, 1.0, 6.0, full)
    assert s.stopped and s.cleared and s.max_gap_s == pytest.approx(0.6)
    # Cleared and resumed within 0.2 s: the caller hardly heard it.
    s = tm.score_overlap([(1.0, 1.8), (2.0, 4.2)], [1.8], 1.5, 1.0, 6.0, full)
    assert not s.stopped and s.cleared
    # Stopped and stayed silent.
    s = tm.score_overlap([(1.0, 1.8)], [1.8], 1.5, 1.0, 6.0, full)
    assert s.stopped and s.shortfall_s == pytest.approx(2.2)


def test_score_barge() -> None:
    # Interruption 2.0–3.5; agent cleared at 2.25 and answered after the caller finished.
    s = tm.score_barge([(1.0, 2.25), (4.3, 6.0)], [2.25], onset=2.0, voice_end=3.5, until=7.0)
    assert s.stopped and s.clear_s == pytest.approx(0.25) and s.heard_s == pytest.approx(0.25)
    # Held, then resumed over the caller.
    s = tm.score_barge([(1.0, 2.4), (3.0, 5.0)], [2.4], onset=2.0, voice_end=3.5, until=7.0)
    assert not s.stopped
    # Talked on.
    s = tm.score_barge([(1.0, 6.0)], [], onset=2.0, voice_end=3.5, until=7.0)
    assert not s.stopped and s.clear_s is None


def test_summarize_counts_rates_per_kind() -> None:
    res: list[dict[str, Any]] = [
        {"category": "pause", "kind": "turn",
         "score": {"cut_off": True, "missed": False, "v2v_s": None}},
        {"category": "complete", "kind": "turn",
         "score": {"cut_off": False, "missed": False, "v2v_s": 0.8}},
        {"category": "backchannel", "kind": "overlap", "score": {"stopped": False}},
        {"category": "interruption", "kind": "barge",
         "score": {"stopped": True, "clear_s": 0.2, "heard_s": 0.25}},
        {"category": "noise", "kind": "overlap", "score": None},  # not run
    ]
    d = tm.summarize(res).as_dict()
    assert d["false_cut_off_pct"] == 50.0 and d["missed_pct"] == 0.0
    assert d["backchannel_noise_stop_pct"] == 0.0 and d["overlap_items"] == 1
    assert d["v2v_ms"] == {"n": 1, "p50": 800.0, "p95": 800.0}
    assert d["barge_clear_ms"]["p50"] == 200.0 and d["barges_not_stopped"] == 0
