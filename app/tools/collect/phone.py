"""collect_phone: a phone number said or typed, as E.164 ("+14155550123").

Numbers without a country code are read in `default_country`'s numbering plan; "plus ..." or a
"00"/"011" prefix makes it international."""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator

from app.tools.collect.dialogue import CollectKind, CollectOptions, Invalid, Step, Values
from app.tools.digits import spoken_digits

# Country -> (calling code, national significant number lengths). Trunk "0" is dropped.
COUNTRIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "US": ("1", (10,)), "CA": ("1", (10,)), "GB": ("44", (9, 10)), "IE": ("353", (7, 8, 9)),
    "AU": ("61", (9,)), "NZ": ("64", (8, 9, 10)), "IN": ("91", (10,)),
    "DE": ("49", tuple(range(6, 14))),
    "FR": ("33", (9,)), "ES": ("34", (9,)), "IT": ("39", tuple(range(6, 12))),
    "NL": ("31", (9,)), "BE": ("32", (8, 9)), "CH": ("41", (9,)), "AT": ("43", tuple(range(4, 14))),
    "SE": ("46", (7, 8, 9)), "NO": ("47", (8,)), "DK": ("45", (8,)), "PT": ("351", (9,)),
    "MX": ("52", (10,)), "BR": ("55", (10, 11)), "AR": ("54", (10,)), "SG": ("65", (8,)),
    "ZA": ("27", (9,)), "JP": ("81", (9, 10)), "PH": ("63", (10,)), "AE": ("971", (8, 9)),
}
_PLUS = re.compile(r"^\s*(?:\+|plus\b)", re.IGNORECASE)
_LEAD = re.compile(r"^.*?\b(?:is|it's|its|number)\b[\s:,]*", re.IGNORECASE)


class PhoneOptions(CollectOptions):
    default_country: str = "US"  # ISO 3166 code of numbers said without a country code

    @field_validator("default_country")
    @classmethod
    def _known(cls, v: str) -> str:
        code = v.upper()
        if code not in COUNTRIES:
            raise ValueError("unsupported country; one of " + ", ".join(sorted(COUNTRIES)))
        return code


def parse_phone(text: str, default_country: str = "US") -> str:
    """E.164 of a number said ("four one five, five five five, oh one two three"), written
    ("(415) 555-0123", "+44 20 7946 0958") or typed on the keypad; Invalid otherwise."""
    t = _LEAD.sub("", text.strip(), count=1) if not text.strip()[:1].isdigit() else text
    international = bool(_PLUS.match(t))
    digits = spoken_digits(t.replace("-", " "))
    if not international and digits.startswith(("00", "011")):
        digits = digits[3:] if digits.startswith("011") else digits[2:]
        international = True
    if international:
        if not 8 <= len(digits) <= 15 or digits[0] == "0":
            raise Invalid("that doesn't sound like a complete international number")
        return "+" + digits
    code, lengths = COUNTRIES[default_country]
    if code == "1":
        if len(digits) == 11 and digits[0] == "1":
            digits = digits[1:]
        if len(digits) != 10 or digits[0] in "01" or digits[3] in "01":
            raise Invalid("I need the ten digit number, area code first")
        return "+1" + digits
    if digits.startswith(code) and len(digits) - len(code) in lengths:
        digits = digits[len(code):]
    elif digits.startswith("0"):
        digits = digits[1:]
    if len(digits) not in lengths:
        raise Invalid("that doesn't sound like a complete phone number")
    return f"+{code}{digits}"


def country_of(e164: str, default_country: str) -> str | None:
    code = COUNTRIES[default_country][0]
    return default_country if e164.startswith("+" + code) else None


def spoken_number(e164: str) -> str:
    """"+14155550123" → "4 1 5, 5 5 5, 0 1 2 3" (a voice reads it digit by digit)."""
    d = e164[1:]
    if d.startswith("1") and len(d) == 11:
        return ", ".join(" ".join(g) for g in (d[1:4], d[4:7], d[7:]))
    return ", ".join(["plus " + " ".join(d[:-8]), " ".join(d[-8:-4]), " ".join(d[-4:])])


def _parse(text: str, values: Values, opts: Any) -> str:
    return parse_phone(text, opts.default_country)


def _result(values: Values, opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"phone": values["phone"]}
    country = country_of(values["phone"], opts.default_country)
    if country:
        out["country"] = country
    return out


KIND = CollectKind(
    name="collect_phone",
    noun="phone number",
    options=PhoneOptions,
    steps=lambda opts: [Step("phone", "What is your phone number?", _parse)],
    readback=lambda v, opts: spoken_number(v["phone"]),
    result=_result,
    description="Ask the caller for a phone number (said or typed, ending with #), read it "
                "back for confirmation and return it in E.164 as {\"phone\": \"+1...\"}.",
)
