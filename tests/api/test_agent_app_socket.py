"""The customer-app fields of an agent (websocket_url, mode, websocket tools) over REST."""

from __future__ import annotations

import pytest

from tests.api.providers import agent_config
from tests.api.test_agents import _fields

TOOL = {"name": "lookup", "websocket": True,
        "parameters": {"type": "object", "properties": {}}}


async def test_customer_app_agent_is_stored(client, admin_headers):
    cfg = agent_config(websocket_url="wss://apps.example.com/voice", mode="text",
                       websocket_headers={"Authorization": {"credential": "app-token"},
                                          "X-Team": "billing"},
                       websocket_settings={"reply_timeout_s": 8}, tools=[TOOL])
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert r.status_code == 201, r.text
    stored = r.json()["config"]
    assert stored["mode"] == "text" and stored["tools"][0]["websocket"] is True
    assert stored["websocket_headers"]["Authorization"]["credential"] == "app-token"


@pytest.mark.parametrize(("extra", "field"), [
    ({"mode": "audio"}, "mode"),
    ({"mode": "chatty", "websocket_url": "ws://a/"}, "mode"),
    ({"tools": [TOOL]}, "tools.0.websocket"),
    ({"websocket_url": "https://apps.example.com/"}, "websocket_url"),
    ({"websocket_url": "ws://a/", "websocket_headers": {"Bad Header": "x"}},
     "websocket_headers"),
    ({"websocket_url": "ws://a/", "websocket_headers": {"X-Phonebooth-Url": "x"}},
     "websocket_headers"),
    ({"websocket_url": "ws://a/", "websocket_settings": {"connect_attempts": 0}},
     "websocket_settings.connect_attempts"),
    ({"tools": [{**TOOL, "webhook": {"url": "http://x/"}}]}, "tools.0"),
    ({"websocket_url": "ws://a/", "mode": "text", "s2s": {"provider": "openai_realtime"}},
     "mode"),
])
async def test_bad_customer_app_fields_are_422_naming_the_field(client, admin_headers, extra,
                                                                field):
    r = await client.post("/v1/agents", json=agent_config(**extra), headers=admin_headers)
    assert field in _fields(r)


async def test_background_and_thinking_sound_are_checked_when_saved(client, admin_headers):
    ok = agent_config(background={"sound": "office", "volume": 0.1},
                      thinking_audio=True, thinking_sound="hum")
    r = await client.post("/v1/agents", json=ok, headers=admin_headers)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["background"] == {"sound": "office", "volume": 0.1, "loop": True}
    r = await client.post("/v1/agents", json=agent_config(background={"sound": "disco"}),
                          headers=admin_headers)
    assert _fields(r) == {"background.sound"}
    r = await client.post("/v1/agents", json=agent_config(thinking_sound="UklGRgAAAA=="),
                          headers=admin_headers)
    assert _fields(r) == {"thinking_sound"}
