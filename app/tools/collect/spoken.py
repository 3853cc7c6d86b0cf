"""Numbers and letters as callers say them: "nineteen eighty", "fifth", "J O H N"."""

from __future__ import annotations

import re

UNITS = {"zero": 0, "oh": 0, "o": 0, "nought": 0, "one": 1, "two": 2, "three": 3, "four": 4,
         "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
         "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
        "seventy": 70, "eighty": 80, "ninety": 90}
ORDINAL_UNITS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
                 "seventh": 7, "eighth": 8, "ninth": 9}
ORDINALS = {**ORDINAL_UNITS, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
            "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17,
            "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30}
MONTHS = {"january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6,
          "july": 7, "august": 8, "september": 9, "october": 10, "november": 11,
          "december": 12}
MONTH_ABBR = {m[:3]: n for m, n in MONTHS.items()} | {"sept": 9}
MONTH_NAMES = {n: m.capitalize() for m, n in MONTHS.items()}

_TOKENS = re.compile(r"[a-z]+|\d+(?:st|nd|rd|th)?")


def tokens(text: str) -> list[str]:
    return _TOKENS.findall(text.lower().replace("-", " "))


def month_of(tok: str) -> int | None:
    return MONTHS.get(tok) or MONTH_ABBR.get(tok)


def numbers(toks: list[str]) -> list[tuple[int, int]]:
    """Numbers in order as (value, digits written or said): "twelve twenty nine" → [(12, 2),
    (29, 2)]; "oh four" → [(4, 2)]; "fifth" → [(5, 1)]; "1980" → [(1980, 4)]. Non-number
    tokens end a number and are skipped."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if t[0].isdigit():
            digits = t.rstrip("stndrh")
            out.append((int(digits), len(digits)))
        elif t in ("oh", "o", "zero") and nxt in UNITS and nxt not in ("oh", "o", "zero"):
            out.append((UNITS[nxt], 2))  # "oh four": 04
            i += 1
        elif t in TENS:
            if nxt in UNITS and UNITS[nxt] > 0:
                out.append((TENS[t] + UNITS[nxt], 2))
                i += 1
            elif nxt in ORDINAL_UNITS:
                out.append((TENS[t] + ORDINAL_UNITS[nxt], 2))
                i += 1
            else:
                out.append((TENS[t], 2))
        elif t in TEENS:
            out.append((TEENS[t], 2))
        elif t in UNITS:
            out.append((UNITS[t], 1))
        elif t in ORDINALS:
            out.append((ORDINALS[t], 1 if ORDINALS[t] < 10 else 2))
        i += 1
    return out


def letters_joined(words: list[str]) -> list[str]:
    """Runs of single letters are spelled words: ["j", "o", "h", "n", "smith"] →
    ["john", "smith"]; "J.O.H.N." and "J-O-H-N" arrive as single letters too."""
    out: list[str] = []
    run: list[str] = []
    for w in words:
        if len(w) == 1 and w.isalpha():
            run.append(w)
            continue
        if run:
            out.append("".join(run))
            run = []
        out.append(w)
    if run:
        out.append("".join(run))
    return out


def say_digits(digits: str) -> str:
    """"4242" → "4 2 4 2": a voice reads each digit."""
    return " ".join(digits)
