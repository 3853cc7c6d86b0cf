"""Builtin tools' options over REST: a bad option of a collect tool is a 422 naming it."""

from __future__ import annotations

import pytest

from tests.api.providers import agent_config
from tests.api.test_agents import _fields


def tool(builtin: str, **options: object) -> dict[str, object]:
    return {"name": builtin, "builtin": builtin, "options": options}


async def test_collect_tools_are_stored(client, admin_headers):
    tools = [tool("collect_email"), tool("collect_phone", default_country="GB"),
             tool("collect_name", require_last_name=False), tool("collect_dob", min_age=18),
             tool("collect_address", require_postal_code=True),
             tool("collect_credit_card", accepted_brands=["visa", "mastercard"])]
    r = await client.post("/v1/agents", json=agent_config(tools=tools), headers=admin_headers)
    assert r.status_code == 201, r.text
    stored = r.json()["config"]["tools"]
    assert [t["builtin"] for t in stored] == [t["builtin"] for t in tools]


@pytest.mark.parametrize(("bad", "field"), [
    (tool("collect_phone", default_country="XX"), "tools.0.options.default_country"),
    (tool("collect_email", max_attempts=0), "tools.0.options.max_attempts"),
    (tool("collect_email", timeout_s=-1), "tools.0.options.timeout_s"),
    (tool("collect_dob", date_order="YDM"), "tools.0.options.date_order"),
    (tool("collect_credit_card", accepted_brands=["bitcoin"]),
     "tools.0.options.accepted_brands.0"),
    (tool("collect_name", colour="red"), "tools.0.options.colour"),
    (tool("collect_digits", pattern="("), "tools.0.options.pattern"),
    (tool("collect_zipcode"), "tools.0.builtin"),
])
async def test_bad_collect_options_are_422_naming_the_field(client, admin_headers, bad, field):
    r = await client.post("/v1/agents", json=agent_config(tools=[bad]), headers=admin_headers)
    assert field in _fields(r)


async def test_validate_reports_bad_options(client, admin_headers):
    cfg = agent_config(tools=[tool("collect_phone", default_country="XX")])
    r = await client.post("/v1/agents/validate", json=cfg, headers=admin_headers)
    assert r.status_code == 200
    assert [p["field"] for p in r.json()["problems"]] == ["tools.0.options.default_country"]
