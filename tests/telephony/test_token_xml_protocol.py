"""Stream tokens, answer/transfer XML (checked against the official SDK), protocol messages."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from lxml import etree
from plivo import plivoxml

from app.telephony.plivo import protocol as p
from app.telephony.plivo import xml as pxml
from app.telephony.plivo.codec import StreamCodec, UnsupportedCodec
from app.telephony.plivo.token import InvalidToken, make_stream_token, verify_stream_token

SECRET = b"k" * 32


# --- token ---------------------------------------------------------------------------------
def test_token_round_trip_and_binding():
    t = make_stream_token(SECRET, "sess1", "call-a", ttl_s=60, now=1000)
    assert verify_stream_token(SECRET, t, "sess1", "call-a", now=1059) == 1060
    for args, why in [
        (("sess2", "call-a", 1001), "does not match"),
        (("sess1", "call-b", 1001), "does not match"),
        (("sess1", "call-a", 1061), "expired"),
    ]:
        with pytest.raises(InvalidToken, match=why):
            verify_stream_token(SECRET, t, args[0], args[1], now=args[2])
    with pytest.raises(InvalidToken, match="does not match"):
        verify_stream_token(b"other-key", t, "sess1", "call-a", now=1001)
    for bad in (None, "", "abc", "123.", ".abc", "x1.abc"):
        with pytest.raises(InvalidToken):
            verify_stream_token(SECRET, bad, "sess1", "call-a", now=1001)
    # tampering with the expiry breaks the MAC
    head, mac = t.split(".")
    with pytest.raises(InvalidToken):
        verify_stream_token(SECRET, f"{int(head) + 1000}.{mac}", "sess1", "call-a", now=1001)


# --- XML -----------------------------------------------------------------------------------
def _tree(xml: str):
    # parse with the same XML library the official SDK renders with
    return etree.fromstring(xml.encode())


def _same(a, b) -> bool:
    return (a.tag == b.tag and dict(a.attrib) == dict(b.attrib)
            and (a.text or "").strip() == (b.text or "").strip()
            and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True)))


def test_stream_xml_matches_official_sdk():
    url = "wss://srv.example.com/plivo/stream/abc?token=1.x&y=2"
    ours = pxml.stream_response(url, content_type="audio/x-mulaw;rate=8000",
                                status_callback_url="https://srv.example.com/plivo/stream-status")
    sdk = plivoxml.ResponseElement().add(plivoxml.StreamElement(
        url, bidirectional=True, keepCallAlive=True, contentType="audio/x-mulaw;rate=8000",
        statusCallbackUrl="https://srv.example.com/plivo/stream-status",
        statusCallbackMethod="POST")).to_string(False)
    assert _same(_tree(ours), _tree(sdk))
    assert "&amp;y=2" in ours
    assert _tree(ours).find("Stream").text == url


def test_busy_apology_and_dial_xml_match_sdk():
    assert _same(_tree(pxml.busy_response()),
                 _tree(plivoxml.ResponseElement().add(
                     plivoxml.HangupElement(reason="busy")).to_string(False)))
    sdk = plivoxml.ResponseElement().add(
        plivoxml.SpeakElement("Sorry <&> bye", voice="WOMAN", language="en-US")
    ).add(plivoxml.HangupElement()).to_string(False)
    assert _same(_tree(pxml.apology_response("Sorry <&> bye")), _tree(sdk))
    sdk = plivoxml.ResponseElement().add(
        plivoxml.DialElement(caller_id="14155550100").add(plivoxml.NumberElement("14155550123"))
    ).to_string(False)
    assert _same(_tree(pxml.dial_response(["+1 415-555-0123"], caller_id="14155550100")),
                 _tree(sdk))
    sip = _tree(pxml.dial_response(["sip:alice@example.com"]))
    assert sip.find("Dial/User").text == "sip:alice@example.com"
    with pytest.raises(ValueError):
        pxml.dial_response(["not a number"])


def test_warm_transfer_xml_matches_sdk():
    sdk = plivoxml.ResponseElement().add(plivoxml.ConferenceElement(
        "pb-s1", start_conference_on_enter=True, end_conference_on_exit=True, stay_alone=True,
        max_members=2, wait_sound="", enter_sound="", exit_sound="")).to_string(False)
    assert _same(_tree(pxml.conference_response("pb-s1")), _tree(sdk))
    sdk = plivoxml.ResponseElement().add(
        plivoxml.SpeakElement("Ada <&> co", voice="WOMAN", language="en-US")
    ).add(plivoxml.RedirectElement("https://pb.example/join?leg=1", method="POST")
          ).to_string(False)
    assert _same(_tree(pxml.brief_then_redirect("Ada <&> co", "https://pb.example/join?leg=1")),
                 _tree(sdk))


def test_xml_is_well_formed_with_declaration():
    doc = pxml.stream_response("wss://a/b", content_type="audio/x-l16;rate=16000")
    assert doc.startswith("<?xml")
    assert ET.fromstring(doc.split("\n", 1)[1]).tag == "Response"


# --- codec ---------------------------------------------------------------------------------
def test_codec_parse_and_frame_sizes():
    c = StreamCodec.parse("audio/x-mulaw;rate=8000")
    assert (c.frame_samples, c.frame_bytes, c.content_type) == (160, 160, "audio/x-mulaw;rate=8000")
    c16 = StreamCodec.parse("audio/x-l16;rate=16000")
    assert (c16.frame_samples, c16.frame_bytes) == (320, 640)
    x = np.array([1, -2, 300], np.int16)
    assert np.array_equal(c16.decode(c16.encode(x)), x)
    for bad in ("audio/x-mulaw;rate=16000", "audio/opus;rate=48000", "audio/x-l16;rate=x"):
        with pytest.raises(UnsupportedCodec):
            StreamCodec.parse(bad)


# --- protocol ------------------------------------------------------------------------------
START = {"event": "start", "sequenceNumber": 1,
         "start": {"callId": "c1", "streamId": "s1", "accountId": "MA1", "tracks": ["inbound"],
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
         "extra_headers": "userId=12345;sessionId=abc-xyz"}


def test_parse_every_documented_event():
    s = p.parse_message(json.dumps(START))
    assert isinstance(s, p.Start) and s.call_id == "c1" and s.stream_id == "s1"
    assert (s.encoding, s.sample_rate) == ("audio/x-mulaw", 8000)
    assert s.extra_headers == {"userId": "12345", "sessionId": "abc-xyz"}
    m = p.parse_message(json.dumps({
        "event": "media", "sequenceNumber": 2, "streamId": "s1",
        "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 1,
                  "payload": base64.b64encode(b"\xff" * 160).decode()}}))
    assert isinstance(m, p.Media) and m.payload == b"\xff" * 160 and m.chunk == 1
    d = p.parse_message('{"event":"dtmf","sequenceNumber":3,"streamId":"s1",'
                        '"dtmf":{"track":"inbound","digit":"5","timestamp":"1"}}')
    assert isinstance(d, p.Dtmf) and d.digit == "5"
    for ev in ("playedStream", "played"):
        ps = p.parse_message(json.dumps({"event": ev, "streamId": "s1", "name": "turn-7"}))
        assert isinstance(ps, p.PlayedStream) and ps.name == "turn-7"
    assert isinstance(p.parse_message('{"event":"clearedAudio","streamId":"s1"}'), p.ClearedAudio)
    assert isinstance(p.parse_message('{"event":"stop"}'), p.Stop)
    pf = p.parse_message('{"event":"playFailed","reason":"bad format"}')
    assert isinstance(pf, p.PlayFailed) and pf.reason == "bad format"
    assert isinstance(p.parse_message('{"event":"error","error":"buffer_overflow"}'),
                      p.StreamError)
    u = p.parse_message('{"event":"somethingNew","sequenceNumber":9}')
    assert isinstance(u, p.Unknown) and u.event == "somethingNew"


def test_start_variants():
    alt = json.loads(json.dumps(START))
    alt["start"]["mediaFormat"] = {"encoding": "audio/x-l16;rate=16000"}
    alt["extra_headers"] = '{"a": 1}'
    s = p.parse_message(json.dumps(alt))
    assert (s.encoding, s.sample_rate, s.extra_headers) == ("audio/x-l16", 16000, {"a": "1"})
    alt["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": "8000"}
    assert p.parse_message(json.dumps(alt)).sample_rate == 8000


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json", "not valid JSON"),
        ("[1,2]", "not a JSON object"),
        ('{"x":1}', "no 'event'"),
        ('{"event":"media"}', "without a 'media'"),
        ('{"event":"media","media":{"payload":"@@@"}}', "base64"),
        ('{"event":"media","media":{}}', "payload"),
        ('{"event":"start","start":{"callId":"c"}}', "mediaFormat"),
        ('{"event":"start","start":{"streamId":"s","mediaFormat":{"encoding":"audio/x-mulaw"}}}',
         "callId"),
        ('{"event":"dtmf","dtmf":{"digit":"X"}}', "invalid digit"),
        ('{"event":"playedStream"}', "name"),
        (b"\xff\xfe", "UTF-8"),
        ("x" * (64 * 1024 + 1), "exceeds"),
    ],
)
def test_malformed_messages_raise_protocol_error(raw, why):
    with pytest.raises(p.ProtocolError, match=why):
        p.parse_message(raw)


def test_outbound_builders():
    msg = json.loads(p.play_audio(b"\xff" * 160, "audio/x-mulaw", 8000))
    assert msg["event"] == "playAudio" and msg["media"]["sampleRate"] == 8000
    assert msg["media"]["contentType"] == "audio/x-mulaw"
    assert base64.b64decode(msg["media"]["payload"]) == b"\xff" * 160
    assert len(msg["media"]["payload"]) == 216
    assert json.loads(p.checkpoint("s1", "seg-1")) == {"event": "checkpoint", "streamId": "s1",
                                                        "name": "seg-1"}
    assert json.loads(p.clear_audio("s1")) == {"event": "clearAudio", "streamId": "s1"}
    assert json.loads(p.send_dtmf("12#")) == {"event": "sendDTMF", "dtmf": "12#"}
    with pytest.raises(ValueError):
        p.send_dtmf("12x")
