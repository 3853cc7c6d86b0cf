"""The agent's `s2s` block over REST: validated like the other providers, with a cascaded chain
that is all (its call-start fallback) or nothing."""

from __future__ import annotations

from typing import Any

import httpx
from jsonschema import Draft202012Validator

PROBLEM = "application/problem+json"
S2S = {"provider": "openai_realtime", "model": "gpt-realtime", "voice": "alloy",
       "api_key": {"env": "S2S_TEST_KEY"}}


# A cascade that needs no model files, so that /validate reports only on the s2s block (the
# default cascade, the local stack, needs models this machine may not have fetched yet).
CASCADE = {"stt": {"provider": "apitest_stt"}, "llm": {"provider": "apitest_llm"},
           "tts": {"provider": "apitest_tts"}}


def _s2s_agent(**overrides: Any) -> dict[str, Any]:
    return {"name": "Realtime receptionist", "prompt": "You are a helpful receptionist.",
            "s2s": dict(S2S), **overrides}


def _fields(r: httpx.Response) -> set[str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return {e["field"] for e in r.json()["errors"]}


async def test_an_s2s_agent_saves_and_reads_back(client, admin_headers):
    r = await client.post("/v1/agents", json=_s2s_agent(), headers=admin_headers)
    assert r.status_code == 201, r.text
    got = await client.get(f"/v1/agents/{r.json()['id']}", headers=admin_headers)
    assert got.json()["config"]["s2s"]["provider"] == "openai_realtime"


async def test_s2s_with_the_whole_cascade_as_fallback_saves(client, admin_headers):
    cfg = _s2s_agent(stt={"provider": "apitest_stt"}, llm={"provider": "apitest_llm"},
                     tts={"provider": "apitest_tts"})
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert r.status_code == 201, r.text


async def test_a_partial_cascade_next_to_s2s_names_the_missing_kinds(client, admin_headers):
    r = await client.post("/v1/agents", json=_s2s_agent(llm={"provider": "apitest_llm"}),
                          headers=admin_headers)
    assert _fields(r) == {"stt", "tts"}


async def test_unknown_s2s_provider_and_bad_options_name_the_field(client, admin_headers):
    r = await client.post("/v1/agents", json=_s2s_agent(s2s={"provider": "nope"}),
                          headers=admin_headers)
    assert _fields(r) == {"s2s.provider"}
    assert "openai_realtime" in r.json()["errors"][0]["message"]
    bad = {**S2S, "turn_detection": "semantic", "voise": "x"}
    r = await client.post("/v1/agents", json=_s2s_agent(s2s=bad), headers=admin_headers)
    assert _fields(r) == {"s2s.turn_detection", "s2s.voise"}
    r = await client.post("/v1/agents", json=_s2s_agent(
        s2s={"provider": "azure_openai", "api_key": {"env": "K"}}), headers=admin_headers)
    assert _fields(r) == {"s2s.azure"}


async def test_validate_checks_the_s2s_credential(client, admin_headers, monkeypatch):
    monkeypatch.delenv("S2S_TEST_KEY", raising=False)
    r = await client.post("/v1/agents/validate", json=_s2s_agent(**CASCADE),
                          headers=admin_headers)
    assert r.json()["problems"] == [
        {"field": "s2s.api_key", "message": "environment variable S2S_TEST_KEY is not set"}]
    monkeypatch.setenv("S2S_TEST_KEY", "sk-x")
    r = await client.post("/v1/agents/validate", json=_s2s_agent(**CASCADE),
                          headers=admin_headers)
    assert r.json() == {"valid": True, "problems": []}


async def test_s2s_options_keep_their_json_types(client, admin_headers):
    # Strict like the other provider blocks: a number in a string is not a number.
    r = await client.post("/v1/agents", json=_s2s_agent(s2s={**S2S, "temperature": "0.3"}),
                          headers=admin_headers)
    assert _fields(r) == {"s2s.temperature"}
    r = await client.post("/v1/agents", json=_s2s_agent(s2s={**S2S, "max_retries": True}),
                          headers=admin_headers)
    assert _fields(r) == {"s2s.max_retries"}
    r = await client.post("/v1/agents", json=_s2s_agent(s2s=None), headers=admin_headers)
    assert r.status_code == 201, r.text


async def test_openapi_describes_the_s2s_block(client):
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert "s2s" in schemas["AgentConfig"]["properties"]
    assert "S2SBlock" in schemas
    assert "provider" in schemas["S2SBlock"]["required"]
    # As strict as the save-time check: one closed alternative per s2s adapter.
    branches = schemas["S2SBlock"]["oneOf"]
    assert {b["properties"]["provider"]["const"] for b in branches} == {
        "openai_realtime", "azure_openai", "gemini_live"}
    assert all(b["additionalProperties"] is False for b in branches)
    azure = next(b for b in branches if b["properties"]["provider"]["const"] == "azure_openai")
    assert "azure" in azure["required"]
    assert "timeout_s" not in azure["properties"] and "fallback" not in azure["properties"]
    # turn_detection is a closed set on every adapter.
    for b in branches:
        assert set(b["properties"]["turn_detection"]["enum"]) == {"server_vad", "phonebooth"}
        assert b["properties"]["turn_detection"]["default"] == "server_vad"
    # The all-or-nothing cascade next to s2s is in the document too.
    assert schemas["AgentConfig"]["if"]["required"] == ["s2s"]


async def test_published_schema_and_save_time_check_agree_on_s2s(client, admin_headers):
    doc = (await client.get("/openapi.json")).json()
    schema = Draft202012Validator({"$ref": "#/components/schemas/AgentConfig",
                                   "components": doc["components"]})
    cascade = {k: {"provider": f"apitest_{k}"} for k in ("stt", "llm", "tts")}
    cases = [
        _s2s_agent(),
        _s2s_agent(**cascade),
        _s2s_agent(llm=cascade["llm"]),
        _s2s_agent(s2s={**S2S, "voise": "x"}),
        _s2s_agent(s2s={**S2S, "turn_detection": "phonebooth"}),
        _s2s_agent(s2s={**S2S, "turn_detection": "Phonebooth"}),
        _s2s_agent(s2s={"provider": "gemini_live", "api_key": {"env": "K"}, "timeout_s": 5}),
        _s2s_agent(s2s={"provider": "azure_openai", "api_key": {"env": "K"},
                        "azure": {"endpoint": "https://x.openai.azure.com", "deployment": "d"}}),
        # output: text needs tts, which may stand alone; output: audio keeps all-or-nothing.
        _s2s_agent(s2s={**S2S, "output": "text"}),
        _s2s_agent(s2s={**S2S, "output": "text"}, tts=cascade["tts"]),
        _s2s_agent(s2s={**S2S, "output": "text"}, **cascade),
        _s2s_agent(s2s={**S2S, "output": "text"}, llm=cascade["llm"], tts=cascade["tts"]),
        _s2s_agent(s2s={**S2S, "output": "text"}, llm=cascade["llm"]),
        _s2s_agent(s2s={**S2S, "output": "audio"}, tts=cascade["tts"]),
        _s2s_agent(s2s={**S2S, "output": "TEXT"}, tts=cascade["tts"]),
        _s2s_agent(s2s={"provider": "gemini_live", "output": "text"}, tts=cascade["tts"]),
    ]
    for cfg in cases:
        r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
        assert r.status_code in (201, 422), r.text
        assert schema.is_valid(cfg) == (r.status_code == 201), (cfg, r.text)


async def test_turn_detection_is_server_vad_or_phonebooth(client, admin_headers):
    for vendor in ({}, {"provider": "gemini_live"},
                   {"provider": "azure_openai",
                    "azure": {"endpoint": "https://x.openai.azure.com", "deployment": "d"}}):
        r = await client.post("/v1/agents", json=_s2s_agent(
            s2s={**S2S, **vendor, "turn_detection": "phonebooth"}), headers=admin_headers)
        assert r.status_code == 201, r.text
        got = await client.get(f"/v1/agents/{r.json()['id']}", headers=admin_headers)
        assert got.json()["config"]["s2s"]["turn_detection"] == "phonebooth"
    for typo in ("phonebooth_vad", "Phonebooth", "", None, 1):
        r = await client.post("/v1/agents", json=_s2s_agent(
            s2s={**S2S, "turn_detection": typo}), headers=admin_headers)
        assert _fields(r) == {"s2s.turn_detection"}, typo
        assert "server_vad" in r.json()["errors"][0]["message"]
    r = await client.post("/v1/agents/validate", json=_s2s_agent(
        s2s={**S2S, "turn_detection": "phonebooht"}, **CASCADE), headers=admin_headers)
    assert [p["field"] for p in r.json()["problems"]] == ["s2s.turn_detection"]


async def test_text_output_needs_the_agents_tts(client, admin_headers):
    """output: text has the agent's tts speak the model's text: without a tts block it is a 422
    naming s2s.output; the tts may stand alone (it is the voice, not a partial fallback)."""
    text = {**S2S, "output": "text"}
    r = await client.post("/v1/agents", json=_s2s_agent(s2s=text), headers=admin_headers)
    assert _fields(r) == {"s2s.output"}
    assert "tts" in r.json()["errors"][0]["message"]
    r = await client.post("/v1/agents/validate", json=_s2s_agent(s2s=text),
                          headers=admin_headers)
    assert "s2s.output" in [p["field"] for p in r.json()["problems"]]
    r = await client.post("/v1/agents", json=_s2s_agent(
        s2s=text, tts={"provider": "apitest_tts"}), headers=admin_headers)
    assert r.status_code == 201, r.text
    got = await client.get(f"/v1/agents/{r.json()['id']}", headers=admin_headers)
    assert got.json()["config"]["s2s"]["output"] == "text"
    # With more than tts, the cascade is all or nothing as before.
    r = await client.post("/v1/agents", json=_s2s_agent(
        s2s=text, tts={"provider": "apitest_tts"}, llm={"provider": "apitest_llm"}),
        headers=admin_headers)
    assert _fields(r) == {"stt"}
    # output: audio (the default) is unchanged: tts alone is a partial cascade.
    r = await client.post("/v1/agents", json=_s2s_agent(
        s2s={**S2S, "output": "audio"}, tts={"provider": "apitest_tts"}), headers=admin_headers)
    assert _fields(r) == {"stt", "llm"}
    for bad in ("TEXT", "speech", None):
        r = await client.post("/v1/agents", json=_s2s_agent(
            s2s={**S2S, "output": bad}, tts={"provider": "apitest_tts"}), headers=admin_headers)
        assert "s2s.output" in _fields(r), bad


async def test_openapi_publishes_the_output_option(client):
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for b in schemas["S2SBlock"]["oneOf"]:
        assert set(b["properties"]["output"]["enum"]) == {"audio", "text"}
        assert b["properties"]["output"]["default"] == "audio"
