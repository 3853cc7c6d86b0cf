"""collect_credit_card: card number (Luhn-checked), expiry (MM/YY, not past) and CVV.

The number is sensitive: the collector listens with `sensitive=True`, so every event of the call
shows the caller's digits masked while it runs, and what it says and returns names only the
last four digits ("**** **** **** 4242"). The CVV is checked and then dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field

from app.tools.collect.dialogue import CollectKind, CollectOptions, Invalid, Step, Values
from app.tools.collect.spoken import MONTH_NAMES, month_of, numbers, say_digits, tokens
from app.tools.digits import spoken_digits

Brand = Literal["visa", "mastercard", "amex", "discover", "diners", "jcb", "unionpay"]
BRAND_NAMES = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express",
               "discover": "Discover", "diners": "Diners Club", "jcb": "JCB",
               "unionpay": "UnionPay"}


class CardOptions(CollectOptions):
    require_expiry: bool = True
    require_cvv: bool = True
    accepted_brands: list[Brand] | None = Field(None, min_length=1)


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def brand_of(number: str) -> Brand | None:
    two, four, six = int(number[:2]), int(number[:4]), int(number[:6])
    if number[0] == "4":
        return "visa"
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    if number.startswith("6011") or two == 65 or 644 <= int(number[:3]) <= 649 \
            or 622126 <= six <= 622925:
        return "discover"
    if two in (36, 38, 39) or 300 <= int(number[:3]) <= 305:
        return "diners"
    if 3528 <= four <= 3589:
        return "jcb"
    if two == 62:
        return "unionpay"
    return None


def masked(number: str) -> str:
    return f"**** **** **** {number[-4:]}"


def parse_card_number(text: str, accepted: list[Brand] | None = None) -> str:
    digits = spoken_digits(re.sub(r"(?<=\d)[\s-]+(?=\d)", "", text))
    if not 12 <= len(digits) <= 19:
        raise Invalid("I need the whole card number, twelve to nineteen digits")
    if not luhn_ok(digits):
        raise Invalid("that card number doesn't look right")
    brand = brand_of(digits)
    if accepted is not None and brand not in accepted:
        names = ", ".join(BRAND_NAMES[b] for b in accepted)
        raise Invalid(f"we can only take {names} cards")
    return digits


def parse_expiry(text: str, today: dt.date | None = None) -> tuple[int, int]:
    """(month, year) of "12/29", "twelve twenty nine", "oh four twenty seven", "one two two
    nine", "December 2029"; a card is valid to the end of its month."""
    today = today or dt.date.today()
    month = year = None
    m = re.search(r"\b(\d{1,2})\s*[/\-.]\s*(\d{2}|\d{4})\b", text)
    toks = [t for t in tokens(text) if t != "and"]
    named = next((month_of(t) for t in toks if month_of(t)), None)
    if m is not None:
        month, year = int(m.group(1)), int(m.group(2))
    elif named is not None:
        month = named
        groups = numbers([t for t in toks if not month_of(t)])
        if len(groups) == 1:
            year = groups[0][0]
        elif len(groups) == 2 and groups[0][0] == 20:
            year = 2000 + groups[1][0]
    else:
        groups = numbers(toks)
        run = ""  # said digit by digit ("one two two nine") or typed ("1229")
        if len(groups) > 1 and all(d == 1 for _, d in groups):
            run = "".join(str(v) for v, _ in groups)
        elif len(groups) == 1 and groups[0][1] in (3, 4, 6):
            run = str(groups[0][0]).zfill(groups[0][1])
        if run:
            split = 1 if len(run) == 3 else 2
            if len(run) in (3, 4, 6):
                month, year = int(run[:split]), int(run[split:])
        elif len(groups) == 2:
            month, year = groups[0][0], groups[1][0]
        elif len(groups) == 3 and groups[1][0] == 20:
            month, year = groups[0][0], 2000 + groups[2][0]
    if month is None or year is None or not 1 <= month <= 12:
        raise Invalid("I need the expiry month and year, like oh four twenty seven")
    if year < 100:
        year += 2000
    if (year, month) < (today.year, today.month):
        raise Invalid("that card has expired")
    if year > today.year + 20:
        raise Invalid("that expiry date doesn't look right")
    return month, year


def parse_cvv(text: str, brand: Brand | None) -> str:
    digits = spoken_digits(text)
    want = 4 if brand == "amex" else 3
    if len(digits) != want:
        raise Invalid(f"the security code has {want} digits")
    return digits


def _steps(opts: Any) -> list[Step]:
    steps = [Step("number", "Please say or key in your card number, then press pound.",
                  lambda t, v, o: parse_card_number(t, o.accepted_brands))]
    if opts.require_expiry:
        steps.append(Step("expiry", "What is the expiry date, month and year?",
                          lambda t, v, o: parse_expiry(t)))
    if opts.require_cvv:
        steps.append(Step("cvv", "And the security code on the back of the card?",
                          lambda t, v, o: parse_cvv(t, brand_of(v["number"]))))
    return steps


def _readback(v: Values, opts: Any) -> str:
    brand = brand_of(v["number"])
    said = f"a {BRAND_NAMES[brand]} card" if brand else "a card"
    said += f" ending in {say_digits(v['number'][-4:])}"
    if "expiry" in v:
        month, year = v["expiry"]
        said += f", expiring {MONTH_NAMES[month]} {year}"
    return said


def _result(v: Values, opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"card_number": masked(v["number"]), "last4": v["number"][-4:],
                           "brand": brand_of(v["number"]) or "unknown"}
    if "expiry" in v:
        month, year = v["expiry"]
        out["expiry"] = f"{month:02d}/{year % 100:02d}"
    if "cvv" in v:
        out["cvv_provided"] = True
    return out


KIND = CollectKind(
    name="collect_credit_card",
    noun="card details",
    options=CardOptions,
    steps=_steps,
    readback=_readback,
    result=_result,
    description="Take the caller's payment card (number, expiry, security code) securely: "
                "the card number is never shown to you. Returns {\"card_number\": masked, "
                "\"last4\", \"brand\", \"expiry\": \"MM/YY\", \"cvv_provided\"}.",
    sensitive=True,
)
