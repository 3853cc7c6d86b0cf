"""collect_email: "john dot smith at example dot com" → john.smith@example.com."""

from __future__ import annotations

import re
from typing import Any

from app.tools.collect.dialogue import CollectKind, CollectOptions, Invalid, Step, Values

_SYMBOLS = {"at": "@", "dot": ".", "period": ".", "point": ".", "underscore": "_",
            "dash": "-", "hyphen": "-", "minus": "-", "plus": "+"}
# Words before the address: "my email is", "it's", "sure, it is".
_LEAD = {"i", "said", "my", "email", "e-mail", "mail", "address", "is", "it's", "its", "it",
         "sure", "yes", "yeah", "ok", "okay", "the", "so", "that's", "thats", "um", "uh", "this"}
_DIGIT_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_EMAIL = re.compile(
    r"^(?=.{3,254}$)[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}$")


class EmailOptions(CollectOptions):
    pass


def parse_email(text: str) -> str:
    """The address in an answer, written ("John.Smith@Example.com") or spoken ("john dot smith
    at example dot com", "j o h n at gmail dot com"); Invalid otherwise."""
    t = text.strip().lower().rstrip(".!?,")
    t = re.sub(r"\bat sign\b|\bat symbol\b", "at", t)
    words = [w.strip(",;:!?\"") for w in t.split()]
    words = [w for w in words if w]
    if "@" not in "".join(words) and "at" not in words:
        raise Invalid("I need the whole e-mail address, with the part after the at sign")
    out: list[str] = []
    for w in words:
        if w in _SYMBOLS:
            out.append(_SYMBOLS[w])
        elif w in _DIGIT_WORDS:
            out.append(_DIGIT_WORDS[w])
        else:
            out.append(w)
    # The address starts after the lead-in ("my email is").
    start = 0
    while start < len(out) and out[start] in _LEAD:
        start += 1
    address = "".join(out[start:]).rstrip(".")
    if not _EMAIL.match(address) or ".." in address:
        raise Invalid("that doesn't sound like a complete e-mail address")
    return address


def _parse(text: str, values: Values, opts: Any) -> str:
    return parse_email(text)


KIND = CollectKind(
    name="collect_email",
    noun="e-mail address",
    options=EmailOptions,
    steps=lambda opts: [Step("email", "What is your e-mail address?", _parse)],
    readback=lambda v, opts: v["email"],
    result=lambda v, opts: {"email": v["email"]},
    description="Ask the caller for their e-mail address, read it back for confirmation and "
                "return it as {\"email\": ...}.",
)
