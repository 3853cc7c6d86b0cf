"""Start/stop hysteresis shared by the VAD engines, on scripted window decisions."""

from __future__ import annotations

from pipelines.vad.segmenter import SpeechSegmenter


def run(pattern: str, start_ms: float = 60, stop_ms: float = 60, pauses: bool = False,
        kinds: tuple[str, ...] = ("start", "stop")) -> list[tuple[str, float, float]]:
    """pattern: one char per 20 ms window, 'x' speech, '.' silence. The events of `kinds`
    (starts and stops), or with `pauses` every event."""
    seg = SpeechSegmenter(start_ms, stop_ms)
    out = []
    for i, c in enumerate(pattern):
        ev = seg.update(c == "x", i * 320, 320)
        if ev is not None and (pauses or ev.kind in kinds):
            out.append((ev.kind, ev.at_ms, ev.speech_ms))
    return out


def test_a_pause_is_reported_halfway_to_the_stop_once_per_silent_run() -> None:
    # stop_ms 80: a pause after 40 ms of silence, with the edge the stop will carry (the quiet
    # point, 30 ms, falls in the same window: the pause stands for both). Speech after it,
    # before the stop, is a resume.
    assert run("xxxx..x..xxx....", stop_ms=80, pauses=True) == [
        ("start", 0.0, 0.0), ("pause", 80.0, 80.0), ("resume", 120.0, 0.0),
        ("pause", 140.0, 140.0), ("resume", 180.0, 0.0),
        ("pause", 240.0, 240.0), ("stop", 240.0, 240.0)]
    # A silent run shorter than the quiet point says nothing; nothing before the speech starts.
    assert run("...xxxx.xxx.....", stop_ms=80, pauses=True) == [
        ("start", 60.0, 0.0), ("pause", 220.0, 160.0), ("stop", 220.0, 160.0)]


def test_the_caller_is_quiet_after_30_ms_long_before_the_pause() -> None:
    # stop_ms 200: quiet after 2 silent windows (40 ms >= 30), the pause after 5 (100 ms).
    assert run("xxxx..x" + "." * 10, stop_ms=200, pauses=True) == [
        ("start", 0.0, 0.0), ("quiet", 80.0, 80.0), ("resume", 120.0, 0.0),
        ("quiet", 140.0, 140.0), ("pause", 140.0, 140.0), ("stop", 140.0, 140.0)]


def test_edges_are_backdated_and_need_the_full_run() -> None:
    # speech from window 2 (40 ms) to 7 (silence from 160 ms)
    assert run("..xxxxxx....") == [("start", 40.0, 0.0), ("stop", 160.0, 120.0)]


def test_short_blips_and_short_gaps_are_ignored() -> None:
    assert run("xx..xx..x.") == []  # never 60 ms of speech in a row
    assert run("xxxx..xxxx...") == [("start", 0.0, 0.0), ("stop", 200.0, 200.0)]


def test_thresholds_between_windows_round_up_to_whole_windows() -> None:
    # start_ms 50 needs 3 windows (60 ms >= 50), stop_ms 30 needs 2 (40 ms >= 30)
    assert run("xxx..", start_ms=50, stop_ms=30) == [("start", 0.0, 0.0), ("stop", 60.0, 60.0)]


def onsets(pattern: str, start_ms: float = 200) -> list[tuple[str, float, float]]:
    return run(pattern, start_ms, 200, kinds=("onset", "onset_lost", "start"))


def test_an_onset_comes_after_60_ms_of_speech_and_is_lost_if_no_start_follows() -> None:
    # 60 ms of speech (3 windows of 20 ms) is an onset, from the run's first window; a run that
    # stops at 120 ms, short of the 200 ms start, is lost where it ended, 120 ms long.
    assert onsets("..xxxxxx....") == [("onset", 40.0, 0.0), ("onset_lost", 160.0, 120.0)]
    # Shorter than the onset: nothing at all. A run that becomes a start: onset, then start
    # with the same edge, and no loss.
    assert onsets("..xx..........") == []
    assert onsets("xxxxxxxxxxxx..") == [("onset", 0.0, 0.0), ("start", 0.0, 0.0)]
    # A start no longer than the onset needs no onset.
    assert onsets("xxxxxx", start_ms=60) == [("start", 0.0, 0.0)]
