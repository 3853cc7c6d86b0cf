"""collect_name: a person's name, said or spelled ("John Smith, S M I T H")."""

from __future__ import annotations

import re
from typing import Any

from app.tools.collect.dialogue import CollectKind, CollectOptions, Invalid, Step, Values
from app.tools.collect.spoken import letters_joined

_LEAD = re.compile(
    r"^\s*(?:(?:yes|yeah|sure|ok|okay|hi|hello|well|um|uh)\b[\s,.]*)*"
    r"(?:my (?:full |first |last )?name is|my name's|the name is|name's|this is|it's|it is|"
    r"i am|i'm|call me)?\s*", re.IGNORECASE)
_FILLER = {"spelled", "spelt", "spelling", "that's", "thats", "that", "is", "as", "in", "and",
           "with", "a", "an", "the", "letter", "letters", "capital", "my", "name", "first",
           "last", "surname", "family", "given", "it's", "its"}
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)


class NameOptions(CollectOptions):
    require_last_name: bool = True


def _cap(word: str) -> str:
    if word != word.lower() and word != word.upper():
        return word  # McDonald, DeShawn: as said
    return "-".join("'".join(p[:1].upper() + p[1:].lower() for p in part.split("'"))
                    for part in word.replace("’", "'").split("-"))


def parse_name(text: str, require_last_name: bool = True) -> list[str]:
    """The parts of a name: "my name is john smith" → ["John", "Smith"]; spelled letters make
    a word ("J O N" → "Jon") and replace the word said just before them ("Jon, J O N")."""
    if re.search(r"\d", text):
        raise Invalid("a name has no numbers in it")
    t = _LEAD.sub("", text, count=1)
    # "J.O.H.N." and "J-O-H-N" are letters too.
    t = re.sub(r"\b([^\W\d_])[.-](?=[^\W\d_]\b)", r"\1 ", t)
    raw = [w for w in _WORD.findall(t)]
    words = [w for w in raw if w.lower() not in _FILLER or len(w) == 1]
    joined = letters_joined(words)
    parts: list[str] = []
    for w in joined:
        spelled = len(w) > 1 and w in _spelled(words)
        if spelled and parts and _close(parts[-1], w):
            parts[-1] = w  # "Jon J O N": the spelling wins
        elif len(w) > 1 or not parts:
            parts.append(w)
    parts = [_cap(p) for p in parts if len(p) > 1 or p.isupper()]
    if not parts:
        raise Invalid("I didn't catch a name")
    if len(parts) > 5 or any(len(p) > 40 for p in parts):
        raise Invalid("that doesn't sound like a name")
    if require_last_name and len(parts) < 2:
        raise Invalid("I need both your first and last name")
    return parts


def _spelled(words: list[str]) -> set[str]:
    """The words that were spelled out letter by letter."""
    out: set[str] = set()
    run: list[str] = []
    for w in [*words, ""]:
        if len(w) == 1 and w.isalpha():
            run.append(w)
            continue
        if len(run) > 1:
            out.add("".join(run))
        run = []
    return out


def _close(said: str, spelled: str) -> bool:
    """The spelling is of the word said before it (same start, similar length)."""
    return said[:1].lower() == spelled[:1].lower() and abs(len(said) - len(spelled)) <= 2


def _parse(text: str, values: Values, opts: Any) -> list[str]:
    return parse_name(text, opts.require_last_name)


def _result(values: Values, opts: Any) -> dict[str, Any]:
    parts: list[str] = values["name"]
    out: dict[str, Any] = {"name": " ".join(parts), "first_name": parts[0]}
    if len(parts) > 1:
        out["last_name"] = parts[-1]
    if len(parts) > 2:
        out["middle_name"] = " ".join(parts[1:-1])
    return out


def _readback(values: Values, opts: Any) -> str:
    parts: list[str] = values["name"]
    letters = ", ".join(" ".join(p.upper()) for p in parts)
    return f"{' '.join(parts)}, spelled {letters}"


KIND = CollectKind(
    name="collect_name",
    noun="name",
    options=NameOptions,
    steps=lambda opts: [Step("name", "What is your full name? You can spell it if you like."
                             if opts.require_last_name else "What is your name?", _parse)],
    readback=_readback,
    result=_result,
    description="Ask the caller for their name (they may spell it), read it back for "
                "confirmation and return {\"name\", \"first_name\", \"last_name\"}.",
)
