"""collect_dob: a date of birth ("March fifth nineteen eighty", "03/05/1980") as an ISO date.

It must be a real calendar date, not in the future, and at most 130 years ago; `min_age`
refuses callers younger than that. Numeric dates follow `date_order` (MDY, DMY or YMD)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field

from app.tools.collect.dialogue import CollectKind, CollectOptions, Invalid, Step, Values
from app.tools.collect.spoken import MONTH_NAMES, TEENS, TENS, month_of, numbers, tokens

DateOrder = Literal["MDY", "DMY", "YMD"]
_NUMERIC = re.compile(r"\b(\d{1,4})\s*[/.\-]\s*(\d{1,2})\s*[/.\-]\s*(\d{2,4})\b")
_COMPACT = re.compile(r"^\s*(\d{8})\s*$")  # typed on the keypad


class DobOptions(CollectOptions):
    date_order: DateOrder = "MDY"
    min_age: int | None = Field(None, ge=0, le=130)


def _full_year(y: int, digits: int, today: dt.date) -> int:
    if digits > 2:
        return y
    return 2000 + y if 2000 + y <= today.year else 1900 + y


def _year_words(toks: list[str], today: dt.date) -> int | None:
    """"nineteen eighty" 1980, "nineteen oh five" 1905, "two thousand and one" 2001,
    "twenty twelve" 2012, "eighty five" 1985, "1980"."""
    toks = [t for t in toks if t != "and"]
    if not toks:
        return None
    if len(toks) == 1 and toks[0].isdigit():
        return _full_year(int(toks[0]), len(toks[0]), today)
    if "thousand" in toks:
        i = toks.index("thousand")
        head = numbers(toks[:i])
        tail = numbers(toks[i + 1:])
        if len(head) != 1 or len(tail) > 1:
            return None
        return head[0][0] * 1000 + (tail[0][0] if tail else 0)
    if "hundred" in toks:
        i = toks.index("hundred")
        head = numbers(toks[:i])
        tail = numbers(toks[i + 1:])
        if len(head) != 1 or len(tail) > 1:
            return None
        return head[0][0] * 100 + (tail[0][0] if tail else 0)
    groups = numbers(toks)
    if len(groups) == 1:
        value, digits = groups[0]
        return _full_year(value, digits, today)
    if len(groups) == 2 and toks[0] in TEENS | TENS and groups[0][0] in range(10, 100) \
            and groups[1][0] < 100:
        return groups[0][0] * 100 + groups[1][0]
    return None


def _day_and_year(toks: list[str]) -> tuple[list[str], list[str]]:
    """Split the tokens after the month: the day is one number ("fifth", "5th", "twenty
    first", "31"), the year the rest."""
    if not toks:
        return [], []
    first = toks[0]
    second = numbers(toks[1:2])
    if first in TENS and second and second[0][0] < 10:
        return toks[:2], toks[2:]
    return toks[:1], toks[1:]


def parse_dob(text: str, date_order: DateOrder = "MDY", min_age: int | None = None,
              today: dt.date | None = None) -> dt.date:
    today = today or dt.date.today()
    day = month = year = None
    m = _NUMERIC.search(text) or _COMPACT.match(text)
    if m is not None:
        if len(m.groups()) == 1:
            s = m.group(1)
            parts = [s[:4], s[4:6], s[6:]] if date_order == "YMD" else [s[:2], s[2:4], s[4:]]
        else:
            parts = list(m.groups())
        if len(parts[0]) > 2 or date_order == "YMD":
            y, mo, d = parts
        elif date_order == "DMY":
            d, mo, y = parts
        else:
            mo, d, y = parts
        day, month, year = int(d), int(mo), _full_year(int(y), len(y), today)
    else:
        toks = [t for t in tokens(text) if t not in ("the", "of", "on", "born", "in")]
        where = next((i for i, t in enumerate(toks) if month_of(t)), None)
        if where is None:
            raise Invalid("I need the month, day and year")
        month = month_of(toks[where])
        before = [t for t in toks[:where] if numbers([t])]
        after = toks[where + 1:]
        if before:  # "the fifth of March nineteen eighty"
            day_toks, year_toks = before, after
        else:
            day_toks, year_toks = _day_and_year(after)
        days = numbers(day_toks)
        day = days[0][0] if len(days) == 1 else None
        year = _year_words(year_toks, today)
    if day is None or month is None or year is None:
        raise Invalid("I need the month, day and year")
    try:
        dob = dt.date(year, month, day)
    except ValueError:
        raise Invalid("that isn't a real date") from None
    if dob > today:
        raise Invalid("that date is in the future")
    age = today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))
    if age > 130:
        raise Invalid("that date is too long ago")
    if min_age is not None and age < min_age:
        raise Invalid(f"you need to be at least {min_age} years old")
    return dob


def spoken_date(d: dt.date) -> str:
    return f"{MONTH_NAMES[d.month]} {d.day}, {d.year}"


def _parse(text: str, values: Values, opts: Any) -> dt.date:
    return parse_dob(text, opts.date_order, opts.min_age)


KIND = CollectKind(
    name="collect_dob",
    noun="date of birth",
    options=DobOptions,
    steps=lambda opts: [Step("dob", "What is your date of birth?", _parse)],
    readback=lambda v, opts: spoken_date(v["dob"]),
    result=lambda v, opts: {"dob": v["dob"].isoformat()},
    description="Ask the caller for their date of birth, read it back for confirmation and "
                "return it as {\"dob\": \"YYYY-MM-DD\"}.",
)
