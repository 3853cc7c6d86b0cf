"""Plivo XML documents we return from the answer and transfer URLs.

Built with ElementTree so text and attributes are escaped (a `&` in the stream URL becomes
`&amp;`, as the official SDK renders it). Attribute names and boolean renderings follow the SDK.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

XML_CONTENT_TYPE = "application/xml"

_E164ISH = re.compile(r"^\+?[0-9]{2,20}$")


def _render(root: ET.Element) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def _bool(v: bool) -> str:
    return "true" if v else "false"


def stream_response(
    stream_url: str,
    *,
    content_type: str,
    status_callback_url: str | None = None,
    status_callback_method: str = "POST",
    bidirectional: bool = True,
    keep_call_alive: bool = True,
    stream_timeout_s: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> str:
    """`<Response><Stream …>wss://…</Stream></Response>` for a bidirectional agent stream."""
    if status_callback_method not in ("GET", "POST"):
        raise ValueError("statusCallbackMethod must be GET or POST")
    root = ET.Element("Response")
    attrs = {
        "bidirectional": _bool(bidirectional),
        "keepCallAlive": _bool(keep_call_alive),
        "contentType": content_type,
    }
    if stream_timeout_s is not None:
        if stream_timeout_s <= 0:
            raise ValueError("streamTimeout must be positive")
        attrs["streamTimeout"] = str(int(stream_timeout_s))
    if status_callback_url:
        attrs["statusCallbackUrl"] = status_callback_url
        attrs["statusCallbackMethod"] = status_callback_method
    if extra_headers:
        attrs["extraHeaders"] = ",".join(f"{k}={v}" for k, v in extra_headers.items())
    stream = ET.SubElement(root, "Stream", attrs)
    stream.text = stream_url
    return _render(root)


def busy_response() -> str:
    """Refuse a call we cannot serve (admission control): the caller hears busy."""
    root = ET.Element("Response")
    ET.SubElement(root, "Hangup", {"reason": "busy"})
    return _render(root)


def apology_response(text: str, *, voice: str = "WOMAN", language: str = "en-US") -> str:
    """Speak a short apology, then hang up (unknown number, agent unavailable...)."""
    root = ET.Element("Response")
    speak = ET.SubElement(root, "Speak", {"voice": voice, "language": language})
    speak.text = text
    ET.SubElement(root, "Hangup")
    return _render(root)


def hangup_response(reason: str | None = None) -> str:
    root = ET.Element("Response")
    ET.SubElement(root, "Hangup", {"reason": reason} if reason else {})
    return _render(root)


def dial_response(
    targets: list[str],
    *,
    caller_id: str | None = None,
    timeout_s: int | None = None,
    time_limit_s: int | None = None,
    action_url: str | None = None,
) -> str:
    """`<Dial>` phone numbers (`<Number>`) and SIP URIs (`<User>`): the cold-transfer XML.
    Several are rung at once; the first to answer is connected. `action_url` is fetched when
    the dial ends (its `DialStatus` says how), and what it returns runs next."""
    root = ET.Element("Response")
    attrs: dict[str, str] = {}
    if caller_id:
        attrs["callerId"] = caller_id
    if timeout_s is not None:
        attrs["timeout"] = str(int(timeout_s))
    if time_limit_s is not None:
        attrs["timeLimit"] = str(int(time_limit_s))
    if action_url:
        attrs["action"] = action_url
        attrs["method"] = "POST"
    dial = ET.SubElement(root, "Dial", attrs)
    for target in targets:
        target = target.strip()
        if target.lower().startswith("sip:"):
            ET.SubElement(dial, "User").text = target
        elif _E164ISH.match(target.replace(" ", "").replace("-", "")):
            # Plivo's <Number> takes digits with country code, no '+'.
            ET.SubElement(dial, "Number").text = \
                target.replace(" ", "").replace("-", "").lstrip("+")
        else:
            raise ValueError(f"transfer target must be a phone number or sip: URI, "
                             f"got {target!r}")
    return _render(root)


def conference_response(name: str) -> str:
    """Join conference `name`, the meeting point of a warm transfer: two members (caller and
    target), whoever leaves ends it for the other, no sounds while alone or on entering."""
    root = ET.Element("Response")
    attrs = {"startConferenceOnEnter": "true", "endConferenceOnExit": "true",
             "stayAlone": "true", "maxMembers": "2", "waitSound": "", "enterSound": "",
             "exitSound": ""}
    ET.SubElement(root, "Conference", attrs).text = name
    return _render(root)


def brief_then_redirect(text: str, redirect_url: str, *, voice: str = "WOMAN",
                        language: str = "en-US") -> str:
    """Speak `text` (a warm transfer's brief, to the person who picked up), then fetch
    `redirect_url` for what comes next."""
    root = ET.Element("Response")
    ET.SubElement(root, "Speak", {"voice": voice, "language": language}).text = text
    ET.SubElement(root, "Redirect", {"method": "POST"}).text = redirect_url
    return _render(root)
