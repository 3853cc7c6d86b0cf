"""An agent's MCP tool servers (mcp_servers) over REST: stored as given, bad fields are 422s
naming the field."""

from __future__ import annotations

import pytest

from tests.api.providers import agent_config
from tests.api.test_agents import _fields

SERVER = {"url": "https://tools.example.com/mcp"}


async def test_mcp_servers_are_stored_with_defaults(client, admin_headers):
    cfg = agent_config(mcp_servers=[
        {**SERVER, "headers": {"Authorization": {"credential": "crm-token"}, "X-Team": "ops"},
         "allowed_tools": ["lookup_customer"], "timeout_s": 4},
        {"url": "http://127.0.0.1:9000/sse", "transport": "sse"},
    ])
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert r.status_code == 201, r.text
    first, second = r.json()["config"]["mcp_servers"]
    assert first["transport"] == "streamable_http" and first["timeout_s"] == 4
    assert first["headers"]["Authorization"] == {"credential": "crm-token", "env": None}
    assert first["allowed_tools"] == ["lookup_customer"]
    assert second["transport"] == "sse" and second["allowed_tools"] is None


@pytest.mark.parametrize(("servers", "extra", "field"), [
    ([{"url": "ftp://tools.example.com/mcp"}], {}, "mcp_servers.0.url"),
    ([{"url": "https://"}], {}, "mcp_servers.0.url"),
    ([{"url": "tools.example.com/mcp"}], {}, "mcp_servers.0.url"),
    ([{**SERVER, "transport": "websocket"}], {}, "mcp_servers.0.transport"),
    ([{**SERVER, "headers": {"Bad Header": "x"}}], {}, "mcp_servers.0.headers"),
    ([{**SERVER, "headers": {"X-Phonebooth-Signature": "x"}}], {}, "mcp_servers.0.headers"),
    ([{**SERVER, "headers": {"Authorization": {"vault": "x"}}}], {},
     "mcp_servers.0.headers.Authorization.str"),
    ([{**SERVER, "allowed_tools": ["a", "a"]}], {}, "mcp_servers.0.allowed_tools"),
    ([{**SERVER, "allowed_tools": "lookup"}], {}, "mcp_servers.0.allowed_tools"),
    ([{**SERVER, "timeout_s": 0}], {}, "mcp_servers.0.timeout_s"),
    ([{**SERVER, "connect_timeout_s": 60}], {}, "mcp_servers.0.connect_timeout_s"),
    ([{**SERVER, "tools": ["x"]}], {}, "mcp_servers.0.tools"),
    ([SERVER, SERVER], {}, "mcp_servers"),
    ([SERVER], {"mode": "audio", "websocket_url": "wss://apps.example.com/"}, "mcp_servers"),
])
async def test_bad_mcp_servers_are_422_naming_the_field(client, admin_headers, servers, extra,
                                                         field):
    r = await client.post("/v1/agents", json=agent_config(mcp_servers=servers, **extra),
                          headers=admin_headers)
    fields = _fields(r)
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
