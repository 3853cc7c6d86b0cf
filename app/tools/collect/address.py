"""collect_address: a street address as free text ("123 Main Street, Springfield, Illinois
62704"), with the parts it can tell apart: street_number, street, unit, city, region,
postal_code. It needs at least a number and a street."""

from __future__ import annotations

import re
from typing import Any

from app.tools.collect.dialogue import CollectKind, CollectOptions, Invalid, Step, Values
from app.tools.collect.spoken import TEENS, TENS, UNITS

_SUFFIXES = {
    "street", "st", "avenue", "ave", "road", "rd", "boulevard", "blvd", "drive", "dr", "lane",
    "ln", "way", "court", "ct", "place", "pl", "terrace", "circle", "cir", "parkway", "pkwy",
    "highway", "hwy", "square", "sq", "crescent", "close", "trail", "row", "alley", "loop",
    "path", "pike", "plaza", "walk", "grove", "gardens", "mews", "hill",
}
_UNIT = re.compile(r"\b(?:apartment|apt|unit|suite|ste|flat|floor|room|#)\.?\s*#?\s*([\w-]+)",
                   re.IGNORECASE)
_LEAD = re.compile(r"^\s*(?:(?:yes|yeah|sure|ok|okay|so|um|uh)\b[\s,.]*)*(?:my address is|"
                   r"the address is|address is|i live at|it's|it is|that's|that is)?\s*",
                   re.IGNORECASE)
_US_ZIP = re.compile(r"\b(\d{5}(?:-\d{4})?)\s*$")
_POSTCODE = re.compile(r"\b([A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}|[A-Z]\d[A-Z] ?\d[A-Z]\d|\d{4,6})"
                       r"\s*$", re.IGNORECASE)
_STATES = {
    "AL": "alabama", "AK": "alaska", "AZ": "arizona", "AR": "arkansas", "CA": "california",
    "CO": "colorado", "CT": "connecticut", "DE": "delaware", "FL": "florida", "GA": "georgia",
    "HI": "hawaii", "ID": "idaho", "IL": "illinois", "IN": "indiana", "IA": "iowa",
    "KS": "kansas", "KY": "kentucky", "LA": "louisiana", "ME": "maine", "MD": "maryland",
    "MA": "massachusetts", "MI": "michigan", "MN": "minnesota", "MS": "mississippi",
    "MO": "missouri", "MT": "montana", "NE": "nebraska", "NV": "nevada",
    "NH": "new hampshire", "NJ": "new jersey", "NM": "new mexico", "NY": "new york",
    "NC": "north carolina", "ND": "north dakota", "OH": "ohio", "OK": "oklahoma",
    "OR": "oregon", "PA": "pennsylvania", "RI": "rhode island", "SC": "south carolina",
    "SD": "south dakota", "TN": "tennessee", "TX": "texas", "UT": "utah", "VT": "vermont",
    "VA": "virginia", "WA": "washington", "WV": "west virginia", "WI": "wisconsin",
    "WY": "wyoming", "DC": "district of columbia",
}
_STATE_NAMES = sorted(_STATES.values(), key=len, reverse=True)


class AddressOptions(CollectOptions):
    require_postal_code: bool = False
    require_city: bool = False


def _house_number(words: list[str]) -> tuple[str, int]:
    """The number the address starts with, written ("221B") or said ("one two three",
    "twelve", "forty two"), and how many words it took."""
    if words and re.fullmatch(r"\d+[a-zA-Z]?(?:-\d+)?", words[0]):
        return words[0].upper(), 1
    low = [x.lower() for x in words]
    digits = ""
    n = 0
    while n < len(low):
        w = low[n]
        nxt = low[n + 1] if n + 1 < len(low) else ""
        if w in UNITS and not (w in ("o", "oh") and n == 0):
            digits += str(UNITS[w])
        elif w in TEENS:
            digits += str(TEENS[w])
        elif w in TENS and nxt in UNITS and UNITS[nxt] > 0:
            digits += str(TENS[w] + UNITS[nxt])
            n += 1
        elif w in TENS:
            digits += str(TENS[w])
        elif w == "hundred" and digits:
            digits += "00"
        else:
            break
        n += 1
    return digits, n


def parse_address(text: str, require_postal_code: bool = False,
                  require_city: bool = False) -> dict[str, str]:
    t = _LEAD.sub("", text.strip(), count=1).strip().rstrip(".!?")
    words = t.replace(",", " , ").split()
    number, used = _house_number(words)
    if not number:
        raise Invalid("I need the house or building number and the street")
    rest = " ".join(words[used:]).replace(" , ", ", ").strip(" ,")
    parts: dict[str, str] = {"street_number": number}
    unit = _UNIT.search(rest)
    if unit is not None:
        parts["unit"] = unit.group(1)
        rest = (rest[:unit.start()] + rest[unit.end():]).replace(" ,", ",").strip(" ,")
        rest = re.sub(r"\s*,\s*,", ",", rest)
    segments = [s.strip() for s in rest.split(",") if s.strip()]
    if not segments:
        raise Invalid("I need the street as well as the number")
    # The street ends at its suffix ("Main Street"); without commas the rest is the city.
    street_words = segments[0].split()
    end = next((i + 1 for i, w in enumerate(street_words)
                if w.lower().rstrip(".") in _SUFFIXES and i > 0), len(street_words))
    street = " ".join(street_words[:end])
    if not re.search(r"[^\W\d_]{2,}", street):
        raise Invalid("I need the street as well as the number")
    parts["street"] = street.title() if street == street.lower() else street
    tail = [" ".join(street_words[end:])] if street_words[end:] else []
    tail += segments[1:]
    place = ", ".join(tail)
    zip_match = _US_ZIP.search(place) or _POSTCODE.search(place)
    if zip_match is not None:
        parts["postal_code"] = zip_match.group(1).upper()
        place = place[:zip_match.start()].strip(" ,")
    for code, name in _STATES.items():
        m = re.search(rf"(?:^|[\s,])((?i:{re.escape(name)})|{code})$", place)
        if m is not None:
            parts["region"] = code
            place = place[:m.start(1)].strip(" ,")
            break
    if place:
        city = place.split(",")[0].strip()
        parts["city"] = city.title() if city == city.lower() else city
    if require_postal_code and "postal_code" not in parts:
        raise Invalid("I need the postal code as well")
    if require_city and "city" not in parts:
        raise Invalid("I need the city as well")
    return parts


def formatted(parts: dict[str, str]) -> str:
    line = f"{parts['street_number']} {parts['street']}"
    if parts.get("unit"):
        line += f", Unit {parts['unit']}"
    place = " ".join(p for p in (parts.get("region"), parts.get("postal_code")) if p)
    return ", ".join(p for p in (line, parts.get("city"), place) if p)


def _parse(text: str, values: Values, opts: Any) -> dict[str, str]:
    return parse_address(text, opts.require_postal_code, opts.require_city)


KIND = CollectKind(
    name="collect_address",
    noun="address",
    options=AddressOptions,
    steps=lambda opts: [Step("address", "What is your street address, including the city"
                             + (" and postal code?" if opts.require_postal_code else "?"),
                             _parse)],
    readback=lambda v, opts: formatted(v["address"]),
    result=lambda v, opts: {"address": formatted(v["address"]), **v["address"]},
    description="Ask the caller for a street address, read it back for confirmation and "
                "return {\"address\": ..., \"street_number\", \"street\", \"unit\", \"city\", "
                "\"region\", \"postal_code\"} (the parts it could tell apart).",
)
