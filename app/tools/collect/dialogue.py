"""The dialogue every collect_* tool runs: ask, listen, parse, read back, confirm.

A collector (`CollectKind`) is a list of `Step`s (a card has three: number, expiry, CVV) plus how
to read the values back and what to return. `run_collect` takes over the conversation through
`CallControl.listen()` (turns suspended: the caller's answers are this tool's input, not turns
for the agent's LLM) and:

1. says the step's prompt and waits up to `timeout_s` for an answer;
2. parses it; an answer that does not parse gets a short "sorry, <why>" and the prompt again;
3. once every step has a value, reads them back ("I have john.smith@example.com. Is that
   right?"): yes returns the result; no with a new value ("no, it's ...") takes that value,
   a bare no asks again from the first step.

Every unparsable answer, silence or "no" uses one of `max_attempts`; when they run out the tool
fails with `timeout` (the last was silence), `not_confirmed` (the caller kept saying no) or
`invalid_input`. Errors never carry what the caller said.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.tools.control import CallControl
from app.tools.errors import ErrorKind, ToolExecutionError
from app.tools.listen import CallerInput

# A final transcript that arrives this soon after an answer that did not parse is taken as the
# rest of it (the caller paused mid-address).
CONTINUATION_S = 1.2


class CollectOptions(BaseModel):
    """Options every collect_* tool has."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=500)  # None: the collector's own
    confirm: bool = True  # read the value back and ask "is that right?"
    max_attempts: int = Field(3, ge=1, le=10)
    timeout_s: float = Field(15.0, gt=0, le=120)  # per answer, from the end of the question


class Invalid(ValueError):
    """An answer that does not hold a valid value; `reason` is said to the caller after
    "Sorry, "."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Values = dict[str, Any]


@dataclass(frozen=True)
class Step:
    key: str
    prompt: str
    # (answer, values so far, options) -> the value; raises Invalid.
    parse: Callable[[str, Values, Any], Any]


@dataclass(frozen=True)
class CollectKind:
    name: str  # the builtin, e.g. collect_email
    noun: str  # "e-mail address", for error messages
    options: type[CollectOptions]
    steps: Callable[[Any], list[Step]]
    readback: Callable[[Values, Any], str]  # what follows "I have "
    result: Callable[[Values, Any], dict[str, Any]]
    description: str
    sensitive: bool = False  # mask the caller's digits in every event while it runs


_NO = {"no", "nope", "nah", "wrong", "incorrect", "not", "negative"}
_YES = {"yes", "yeah", "yep", "yup", "ya", "correct", "right", "exactly", "affirmative",
        "sure", "ok", "okay", "perfect", "absolutely", "definitely", "yes please", "uh-huh",
        "mhm", "true", "confirmed", "confirm"}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?|[0-9]+")
_FILLER = re.compile(
    r"^\s*(?:(?:no|nope|nah|not quite|that's wrong|that is wrong|wrong|incorrect|sorry|"
    r"actually|it's|it is|its|i said|should be|it should be)\b[\s,.!]*)+", re.IGNORECASE)


def yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the answer is neither ("1"/"2" on the keypad
    count as yes/no)."""
    t = text.strip().lower()
    if t in ("1", "2"):
        return t == "1"
    words = _WORD.findall(t)
    if any(w in _NO for w in words):
        return False
    if any(w in _YES for w in words) or "that's it" in t:
        return True
    return None


def correction(text: str) -> str:
    """What follows the "no" in "no, it's john at example dot com"."""
    return _FILLER.sub("", text).strip()


class _Tries:
    def __init__(self, kind: CollectKind, max_attempts: int) -> None:
        self.kind = kind
        self.left = max_attempts

    def spend(self, error: ErrorKind, message: str) -> None:
        self.left -= 1
        if self.left <= 0:
            raise ToolExecutionError(error, message)


async def _hear(question: str, opts: Any, control: CallControl, heard: CallerInput,
                tries: _Tries, late: str) -> str | None:
    """Say `question` and return the caller's answer; None, a try spent (`late` says why),
    when none came in time."""
    heard.clear()
    await control.say(question)
    try:
        return await heard.next(opts.timeout_s)
    except TimeoutError:
        tries.spend("timeout", late)
        return None


async def _ask(step: Step, prompt: str, values: Values, opts: Any, control: CallControl,
               heard: CallerInput, tries: _Tries) -> Any:
    question = prompt
    noun = tries.kind.noun
    while True:
        answer = await _hear(question, opts, control, heard, tries,
                             f"the caller did not give their {noun} in time")
        if answer is None:
            question = f"Sorry, I didn't catch that. {prompt}"
            continue
        try:
            return step.parse(answer, values, opts)
        except Invalid as exc:
            reason = exc.reason
        try:  # the caller may have paused half way
            more = await heard.next(CONTINUATION_S)
        except TimeoutError:
            pass
        else:
            try:
                return step.parse(f"{answer} {more}", values, opts)
            except Invalid as exc:
                reason = exc.reason
        tries.spend("invalid_input", f"could not get a valid {noun} from the caller "
                                     f"({reason})")
        question = f"Sorry, {reason}. {prompt}"


async def run_collect(kind: CollectKind, opts: Any, arguments: dict[str, Any],
                      control: CallControl) -> dict[str, Any]:
    steps = kind.steps(opts)
    first_prompt = str(arguments.get("prompt") or opts.prompt or steps[0].prompt)
    tries = _Tries(kind, opts.max_attempts)
    async with control.listen(sensitive=kind.sensitive) as heard:
        values: Values = {}
        while True:
            if not values:
                for i, step in enumerate(steps):
                    values[step.key] = await _ask(
                        step, first_prompt if i == 0 else step.prompt, values, opts, control,
                        heard, tries)
            if not opts.confirm:
                return kind.result(values, opts)
            verdict = await _confirm(kind, values, opts, control, heard, tries)
            if verdict is True:
                return kind.result(values, opts)
            if isinstance(verdict, dict):
                values = verdict  # corrected in the same breath
                continue
            values = {}
            first_prompt = f"Okay, let's try again. {steps[0].prompt}"


async def _confirm(kind: CollectKind, values: Values, opts: Any, control: CallControl,
                   heard: CallerInput, tries: _Tries) -> bool | Values:
    """True when confirmed; a corrected set of values ("no, it's ..."); False to start over."""
    question = f"I have {kind.readback(values, opts)}. Is that right?"
    while True:
        answer = await _hear(question, opts, control, heard, tries,
                             f"the caller did not confirm their {kind.noun} in time")
        if answer is None:
            question = f"Sorry, I didn't catch that. {question}"
            continue
        verdict = yes_no(answer)
        if verdict is True:
            return True
        steps = kind.steps(opts)
        fixed = _corrected(steps, correction(answer), opts) if len(steps) == 1 else None
        if verdict is False:
            tries.spend("not_confirmed", f"the caller did not confirm the {kind.noun}")
            return fixed if fixed is not None else False
        if fixed is not None:  # they just said the right value
            tries.spend("not_confirmed", f"the caller did not confirm the {kind.noun}")
            return fixed
        tries.spend("invalid_input", f"the caller did not answer whether the {kind.noun} "
                                     "was right")
        question = f"Please say yes or no. {question}"


def _corrected(steps: list[Step], text: str, opts: Any) -> Values | None:
    if not text:
        return None
    try:
        return {steps[0].key: steps[0].parse(text, {}, opts)}
    except Invalid:
        return None
