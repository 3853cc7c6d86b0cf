"""Sentence segmentation of streamed LLM text (pipelines/sentences.py)."""

from __future__ import annotations

import pytest

from pipelines.sentences import SentenceSegmenter, clean_for_speech, split_sentences


def stream(deltas: list[str], **kw: int) -> list[tuple[int, str]]:
    """(index of the delta that completed it, sentence); flush results get index len(deltas)."""
    seg = SentenceSegmenter(**kw)
    out: list[tuple[int, str]] = []
    for i, d in enumerate(deltas):
        out += [(i, s) for s in seg.push(d)]
    out += [(len(deltas), s) for s in seg.flush()]
    return out


def test_sentences_are_released_as_soon_as_they_are_complete() -> None:
    deltas = ["Hel", "lo there", ". How ", "are you", "? I'm", " fine!"]
    assert stream(deltas) == [(2, "Hello there."), (4, "How are you?"), (6, "I'm fine!")]


def test_a_dot_at_the_end_of_a_delta_waits_for_the_next_one() -> None:
    # "3." might continue as "3.50": nothing is released until the next character arrives.
    assert stream(["It costs 3.", "50 dollars. Thanks"]) == [
        (1, "It costs 3.50 dollars."), (2, "Thanks")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith will see you. Please wait.", ["Dr. Smith will see you.", "Please wait."]),
        ("Call us e.g. tomorrow. Bye.", ["Call us e.g. tomorrow.", "Bye."]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
        ("Really?! Wow... okay.", ["Really?!", "Wow...", "okay."]),
        ("1. Open the app\n2. Tap login", ["1. Open the app", "2. Tap login"]),
        ("No periods here at all", ["No periods here at all"]),
        ("你好。我很好！", ["你好。", "我很好！"]),
        ("Version 2.5 is out. Great", ["Version 2.5 is out.", "Great"]),
        ("", []),
        ("   \n  ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_markdown_is_not_read_aloud() -> None:
    text = "## Options\n- **Pizza** is _great_\n- `Pasta`\nSee [the menu](http://x.y)."
    assert split_sentences(text) == ["Options", "Pizza is _great_", "Pasta", "See the menu."]
    assert clean_for_speech("***bold*** and ~~gone~~") == "bold and gone"


def test_run_on_text_is_cut_at_a_clause_break() -> None:
    text = "word " * 30 + "and then, " + "more " * 60
    parts = split_sentences(text, max_chars=200)
    assert all(len(p) <= 200 for p in parts)
    assert parts[0].endswith("and then,")
    assert " ".join(parts).split() == text.split()


def test_run_on_text_without_breaks_is_cut_at_a_space() -> None:
    text = "abc " * 100
    parts = split_sentences(text, max_chars=50)
    assert all(len(p) <= 50 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_max_chars_is_validated() -> None:
    with pytest.raises(ValueError):
        SentenceSegmenter(max_chars=5)


def test_first_piece_may_end_at_a_clause_break() -> None:
    # Token-sized deltas as an LLM streams them.
    deltas = ["Hello", ",", " I", "'m", " happy", " to", " help", ",", " really", ".", " We",
              " open", " at", " 9", ",", " daily", ".", ""]
    seg = SentenceSegmenter(first_clause_chars=4)
    pieces = [p for d in deltas for p in seg.push(d)] + seg.flush()
    # Only the first piece is cut at a comma; the rest are whole sentences.
    assert pieces == ["Hello,", "I'm happy to help, really.", "We open at 9, daily."]
    # A clause shorter than the minimum is not cut; numbers like 9,000 have no clause break.
    seg = SentenceSegmenter(first_clause_chars=8)
    assert seg.push("Yes, we have 9,000 of them, all") == ["Yes, we have 9,000 of them,"]
    assert SentenceSegmenter().push("Hello, I am here") == []  # off by default
