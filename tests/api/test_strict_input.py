"""The API refuses what its OpenAPI document rules out: JSON types are not coerced, fallback
chains nest at most two deep (and every level is checked), times are ISO 8601, offsets fit."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.providers import agent_config


async def _errors(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return {e["field"]: e["message"] for e in r.json()["errors"]}


def _llm(**block: Any) -> dict[str, Any]:
    return {"provider": "apitest_llm", **block}


async def test_json_types_are_not_coerced(client, admin_headers):
    config = agent_config(speaks_first=1, response_timeout_s="6",
                          llm=_llm(temperature="0.3"))
    r = await client.post("/v1/agents", json=config, headers=admin_headers)
    assert set(await _errors(r)) == {"speaks_first", "response_timeout_s", "llm.temperature"}
    # An integer where a number is expected is still a number.
    r = await client.post("/v1/agents", json=agent_config(response_timeout_s=6),
                          headers=admin_headers)
    assert r.status_code == 201, r.text


async def test_fallbacks_nest_two_deep_and_every_level_is_checked(client, admin_headers):
    two_deep = _llm(fallback=[_llm(fallback=[_llm(temperature=0.5)])])
    r = await client.post("/v1/agents", json=agent_config(llm=two_deep), headers=admin_headers)
    assert r.status_code == 201, r.text

    typo = _llm(fallback=[_llm(fallback=[_llm(tempreature=0.5)])])
    r = await client.post("/v1/agents", json=agent_config(llm=typo), headers=admin_headers)
    assert set(await _errors(r)) == {"llm.fallback.0.fallback.0.tempreature"}

    three_deep = _llm(fallback=[_llm(fallback=[_llm(fallback=[_llm()])])])
    r = await client.post("/v1/agents", json=agent_config(llm=three_deep), headers=admin_headers)
    errors = await _errors(r)
    assert set(errors) == {"llm.fallback.0.fallback.0.fallback"}
    assert "at most 2 deep" in errors["llm.fallback.0.fallback.0.fallback"]

    r = await client.post("/v1/agents/validate", json=agent_config(llm=three_deep),
                          headers=admin_headers)
    assert r.status_code == 200
    assert [p["field"] for p in r.json()["problems"]] == ["llm.fallback.0.fallback.0.fallback"]


async def test_times_must_be_iso_8601(client, admin_headers):
    for good in ("2026-01-01", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00.123+02:00"):
        r = await client.get("/v1/usage", params={"from": good}, headers=admin_headers)
        assert r.status_code == 200, (good, r.text)
    for bad in ("1700000000", "29938130.96", "yesterday", "2026-01-01\n"):
        r = await client.get("/v1/sessions", params={"to": bad}, headers=admin_headers)
        assert set(await _errors(r)) == {"to"}, bad


async def test_offsets_beyond_any_database_integer_are_refused(client, admin_headers):
    for path in ("/v1/agents", "/v1/numbers"):
        r = await client.get(path, params={"offset": 2**70}, headers=admin_headers)
        assert set(await _errors(r)) == {"offset"}
