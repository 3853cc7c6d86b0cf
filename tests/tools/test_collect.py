"""The collect_* builtins: each parser on its own, then the dialogue through the executor."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.agent_config import ToolConfig
from app.tools.builtins import builtin_option_errors, tool_specs
from app.tools.collect.address import parse_address
from app.tools.collect.card import luhn_ok, parse_card_number, parse_cvv, parse_expiry
from app.tools.collect.dialogue import Invalid, correction, yes_no
from app.tools.collect.dob import parse_dob
from app.tools.collect.email import parse_email
from app.tools.collect.name import parse_name
from app.tools.collect.phone import parse_phone
from app.tools.executor import ToolExecutor, ToolSession
from app.tools.listen import CallerInput, mask_digits
from pipelines import events as ev
from providers.base import ToolCall
from tests.tools.conftest import RecordingControl

TODAY = dt.date(2025, 6, 1)


# -- parsers --------------------------------------------------------------------------------
@pytest.mark.parametrize(("said", "email"), [
    ("john dot smith at example dot com", "john.smith@example.com"),
    ("My email is John.Smith@Example.com.", "john.smith@example.com"),
    ("j o h n at gmail dot com", "john@gmail.com"),
    ("it's jane underscore doe one two at mail dot co dot uk", "jane_doe12@mail.co.uk"),
    ("sure, it is bob dash lee plus news at example dot org", "bob-lee+news@example.org"),
])
def test_email_spoken_and_written(said: str, email: str) -> None:
    assert parse_email(said) == email


@pytest.mark.parametrize("said", ["john smith", "john at example", "at dot com",
                                  "john dot dot smith at example dot com", ""])
def test_email_rejects(said: str) -> None:
    with pytest.raises(Invalid):
        parse_email(said)


@pytest.mark.parametrize(("said", "country", "e164"), [
    ("four one five, five five five, oh one two three", "US", "+14155550123"),
    ("(415) 555-0123", "US", "+14155550123"),
    ("my number is 1 415 555 0123", "US", "+14155550123"),
    ("4155550123", "US", "+14155550123"),  # the keypad
    ("plus four four two zero seven nine four six zero nine five eight", "US",
     "+442079460958"),
    ("011 44 20 7946 0958", "US", "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"),
])
def test_phone_to_e164(said: str, country: str, e164: str) -> None:
    assert parse_phone(said, country) == e164


@pytest.mark.parametrize("said", ["five five five one two", "0155550123", "hello",
                                  "plus one two three"])
def test_phone_rejects(said: str) -> None:
    with pytest.raises(Invalid):
        parse_phone(said, "US")


@pytest.mark.parametrize(("said", "parts"), [
    ("my name is john smith", ["John", "Smith"]),
    ("It's Jon, J O N, Smith", ["Jon", "Smith"]),
    ("John Smyth, that's S M Y T H", ["John", "Smyth"]),
    ("J.O.H.N. Smith", ["John", "Smith"]),
    ("Mary-Jane O'BRIEN", ["Mary-Jane", "O'Brien"]),
    ("sure, it's DeShawn McDonald", ["DeShawn", "McDonald"]),
])
def test_names_said_and_spelled(said: str, parts: list[str]) -> None:
    assert parse_name(said) == parts


def test_name_rejects() -> None:
    for said in ["john", "R2D2 Smith", "", "um"]:
        with pytest.raises(Invalid):
            parse_name(said)
    assert parse_name("john", require_last_name=False) == ["John"]


@pytest.mark.parametrize(("said", "iso"), [
    ("March fifth nineteen eighty", "1980-03-05"),
    ("March 5th, 1980", "1980-03-05"),
    ("the fifth of March nineteen eighty", "1980-03-05"),
    ("I was born on December twenty first two thousand and one", "2001-12-21"),
    ("july fourth nineteen oh five", "1905-07-04"),
    ("September thirtieth twenty twelve", "2012-09-30"),
    ("Feb 29 2000", "2000-02-29"),
    ("03/05/1980", "1980-03-05"),
    ("03051980", "1980-03-05"),
])
def test_dob_forms(said: str, iso: str) -> None:
    assert parse_dob(said, today=TODAY).isoformat() == iso


def test_dob_rejects_and_orders() -> None:
    assert parse_dob("05/03/1980", "DMY", today=TODAY).isoformat() == "1980-03-05"
    for said, why in [("February thirtieth nineteen eighty", "real"),
                      ("Feb 29 2001", "real"),
                      ("March fifth twenty thirty", "future"),
                      ("January 1 1850", "long ago"),
                      ("March fifth", "month, day and year"),
                      ("hello", "month, day and year")]:
        with pytest.raises(Invalid, match=why):
            parse_dob(said, today=TODAY)
    with pytest.raises(Invalid, match="at least 18"):
        parse_dob("June 1 2015", min_age=18, today=TODAY)


def test_address_parts() -> None:
    assert parse_address("123 Main Street, Springfield, Illinois 62704") == {
        "street_number": "123", "street": "Main Street", "city": "Springfield",
        "region": "IL", "postal_code": "62704"}
    assert parse_address("my address is one two three main street springfield") == {
        "street_number": "123", "street": "Main Street", "city": "Springfield"}
    assert parse_address("forty two Wallaby Way apartment 3, Sydney") == {
        "street_number": "42", "street": "Wallaby Way", "unit": "3", "city": "Sydney"}
    assert parse_address("I live at 221B Baker Street, London NW1 6XE")["postal_code"] == \
        "NW1 6XE"
    for said in ["Main Street", "123", "hello there"]:
        with pytest.raises(Invalid):
            parse_address(said)
    with pytest.raises(Invalid, match="postal code"):
        parse_address("123 Main Street", require_postal_code=True)


def test_card_number_luhn_and_brand() -> None:
    spoken = " ".join(["four two four two"] * 4)
    assert parse_card_number(spoken) == "4242424242424242"
    assert parse_card_number("5555-5555-5555-4444") == "5555555555554444"
    assert luhn_ok("378282246310005") and not luhn_ok("4242424242424241")
    for said in ["4242 4242 4242 4241", "1234", "hello"]:
        with pytest.raises(Invalid):
            parse_card_number(said)
    with pytest.raises(Invalid, match="Visa"):
        parse_card_number("5555 5555 5555 4444", ["visa"])


@pytest.mark.parametrize(("said", "expiry"), [
    ("12/29", (12, 2029)), ("twelve twenty nine", (12, 2029)),
    ("oh four twenty seven", (4, 2027)), ("one two two nine", (12, 2029)),
    ("December 2029", (12, 2029)), ("1229", (12, 2029)), ("06/25", (6, 2025)),
])
def test_card_expiry(said: str, expiry: tuple[int, int]) -> None:
    assert parse_expiry(said, TODAY) == expiry


def test_card_expiry_and_cvv_rejects() -> None:
    for said, why in [("01/20", "expired"), ("05/25", "expired"), ("13/29", "month and year"),
                      ("hello", "month and year")]:
        with pytest.raises(Invalid, match=why):
            parse_expiry(said, TODAY)
    assert parse_cvv("one two three", "visa") == "123"
    assert parse_cvv("1234", "amex") == "1234"
    with pytest.raises(Invalid, match="3 digits"):
        parse_cvv("12", "visa")
    with pytest.raises(Invalid, match="4 digits"):
        parse_cvv("123", "amex")


def test_yes_no_and_corrections() -> None:
    assert yes_no("Yes, that's right.") is True
    assert yes_no("yep") is True and yes_no("1") is True
    assert yes_no("No.") is False and yes_no("that's not right") is False
    assert yes_no("john at example dot com") is None
    assert correction("No, it's jane at example dot com") == "jane at example dot com"


def test_mask_digits() -> None:
    assert mask_digits("my card is 4242 four two, double one") == "my card is **** * *, * *"
    assert mask_digits("expires twelve twenty nine") == "expires * * *"


def test_caller_input_keypad_entries() -> None:
    heard = CallerInput()
    heard.feed_dtmf("41")
    heard.feed_dtmf("55#")
    heard.feed_transcript("  ")
    assert heard._queue.get_nowait() == "4155"
    assert heard._queue.empty()


# -- options --------------------------------------------------------------------------------
def builtin(name: str, **options: Any) -> ToolConfig:
    return ToolConfig(name=name, builtin=name, options=options)  # type: ignore[arg-type]


def test_option_validation_and_specs() -> None:
    assert builtin_option_errors(builtin("collect_phone", default_country="XX"))[0]["field"] \
        == "options.default_country"
    assert builtin_option_errors(builtin("collect_email", max_attempts=0))[0]["field"] == \
        "options.max_attempts"
    assert builtin_option_errors(builtin("collect_dob", date_order="YDM"))[0]["field"] == \
        "options.date_order"
    assert builtin_option_errors(builtin("collect_credit_card", accepted_brands=["bitcoin"])) \
        [0]["field"] == "options.accepted_brands.0"
    assert builtin_option_errors(builtin("collect_name", colour="red"))[0]["field"] == \
        "options.colour"
    assert builtin_option_errors(builtin("collect_phone", default_country="gb")) == []
    specs = tool_specs([builtin(n) for n in ("collect_email", "collect_credit_card")])
    assert all(s.description and "prompt" in s.parameters["properties"] for s in specs)


# -- the dialogue ---------------------------------------------------------------------------
class Caller:
    """Answers each question the tool says with the next scripted answer (None: silence)."""

    def __init__(self, control: RecordingControl, answers: list[str | None]) -> None:
        self.control = control
        self.answers = list(answers)
        original = control.say

        async def say(text: str, *, interruptible: bool = True) -> None:
            await original(text, interruptible=interruptible)
            if self.answers and control.heard is not None:
                answer = self.answers.pop(0)
                if answer is not None:
                    control.heard.feed_transcript(answer)

        control.say = say  # type: ignore[method-assign]


def said(control: RecordingControl) -> list[str]:
    return [a[1] for a in control.actions if a[0] == "say"]


async def call_tool(name: str, answers: list[str | None], **options: Any
                    ) -> tuple[Any, RecordingControl, list[ev.Event]]:
    control = RecordingControl()
    Caller(control, answers)
    seen: list[ev.Event] = []
    executor = ToolExecutor([builtin(name, **options)],
                            ToolSession(session_id="s", control=control), seen.append)
    result = await executor(ToolCall(id="c1", name=name, arguments={}))
    assert executor.interruptible
    return result, control, seen


async def test_confirmed_on_yes() -> None:
    result, control, seen = await call_tool(
        "collect_email", ["john dot smith at example dot com", "yes"])
    assert result == {"email": "john.smith@example.com"}
    assert said(control) == ["What is your e-mail address?",
                             "I have john.smith@example.com. Is that right?"]
    assert control.actions[0] == ("listen", False) and ("listened",) in control.actions
    assert [e.type for e in seen] == ["tool.called", "agent_tool.started", "tool.completed",
                                      "agent_tool.completed", "tool.executed"]
    started = next(e for e in seen if isinstance(e, ev.AgentToolStarted))
    assert started.agent_tool_type == "collect_email" and started.agent_tool_id == "c1"


async def test_no_then_corrected() -> None:
    # A bare no asks again; "no, it's ..." takes the new value at once.
    result, control, _ = await call_tool("collect_phone", [
        "four one five five five five oh one two three", "no",
        "four one five five five five oh one two four", "no, it's 415 555 0125", "yes"],
        max_attempts=5)
    assert result == {"phone": "+14155550125", "country": "US"}
    assert said(control)[2] == "Okay, let's try again. What is your phone number?"
    assert said(control)[-1] == "I have 4 1 5, 5 5 5, 0 1 2 5. Is that right?"


async def test_invalid_answer_is_asked_again() -> None:
    result, control, _ = await call_tool("collect_dob", [
        "February thirtieth nineteen eighty", "March fifth nineteen eighty", "yeah"])
    assert result == {"dob": "1980-03-05"}
    assert said(control)[1] == "Sorry, that isn't a real date. What is your date of birth?"
    assert said(control)[2] == "I have March 5, 1980. Is that right?"


async def test_retries_exhausted() -> None:
    result, _, seen = await call_tool("collect_name", ["john", "jane", "bob"])
    assert result["error"]["type"] == "invalid_input"
    assert "first and last name" in result["error"]["message"]
    assert [e.type for e in seen][-2:] == ["tool.failed", "agent_tool.failed"]

    result, _, _ = await call_tool("collect_email", ["a at b dot com", "no", "c at d dot com",
                                                     "no"], max_attempts=2)
    assert result["error"]["type"] == "not_confirmed"


async def test_timeout() -> None:
    result, control, seen = await call_tool("collect_address", [], timeout_s=0.05,
                                            max_attempts=2)
    assert result["error"]["type"] == "timeout"
    assert said(control)[1].startswith("Sorry, I didn't catch that.")
    failed = next(e for e in seen if isinstance(e, ev.ToolFailed))
    assert failed.status == "timeout"


async def test_without_confirmation_and_with_prompt_argument() -> None:
    control = RecordingControl()
    Caller(control, ["123 Main Street, Springfield, IL 62704"])
    executor = ToolExecutor([builtin("collect_address", confirm=False)],
                            ToolSession(session_id="s", control=control), lambda e: None)
    result = await executor(ToolCall(id="c", name="collect_address",
                                     arguments={"prompt": "Where should we ship it?"}))
    assert result["address"] == "123 Main Street, Springfield, IL 62704"
    assert result["postal_code"] == "62704"
    assert said(control) == ["Where should we ship it?"]


async def test_card_is_collected_masked() -> None:
    card = "four two four two " * 4
    result, control, seen = await call_tool(
        "collect_credit_card", [card, "twelve twenty nine", "one two three", "yes"])
    assert result == {"card_number": "**** **** **** 4242", "last4": "4242", "brand": "visa",
                      "expiry": "12/29", "cvv_provided": True}
    assert control.actions[0] == ("listen", True)
    assert said(control)[-1] == ("I have a Visa card ending in 4 2 4 2, expiring December 2029."
                                 " Is that right?")
    assert not any("4242424242424242" in repr(e) for e in seen)
    assert not any("4242424242424242" in str(a) for a in control.actions)
