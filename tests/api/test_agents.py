"""Agents over REST: create, read, versioned patch, delete, validation errors, dry runs."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.providers import agent_config

PROBLEM = "application/problem+json"


async def _create(client: httpx.AsyncClient, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
    r = await client.post("/v1/agents", json=agent_config(**kw), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def _fields(r: httpx.Response) -> set[str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == 422
    return {e["field"] for e in body["errors"]}


async def test_create_read_patch_keeps_old_version(client, admin_headers):
    created = await _create(client, admin_headers)
    assert created["version"] == 1
    assert created["config"]["prompt"] == "You are a helpful receptionist."
    # The documented defaults are filled in and frozen into the version.
    assert created["config"]["turn"]["max_wait_ms"] == 1200
    agent_id = created["id"]

    r = await client.get(f"/v1/agents/{agent_id}", headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["config"] == created["config"]

    r = await client.patch(
        f"/v1/agents/{agent_id}",
        json={"prompt": "You are terse.", "llm": {"temperature": 1.1}},
        headers={**admin_headers, "Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["version"] == 2
    assert patched["config"]["prompt"] == "You are terse."
    assert patched["config"]["llm"] == {
        "provider": "apitest_llm", "timeout_s": 5.0, "fallback": [], "temperature": 1.1,
    }

    v1 = (await client.get(f"/v1/agents/{agent_id}/versions/1", headers=admin_headers)).json()
    assert v1["config"] == created["config"]
    versions = (await client.get(f"/v1/agents/{agent_id}/versions", headers=admin_headers)).json()
    assert [v["version"] for v in versions["items"]] == [1, 2]
    r = await client.get(f"/v1/agents/{agent_id}/versions/3", headers=admin_headers)
    assert r.status_code == 404

    # A patch that changes nothing makes no new version.
    r = await client.patch(f"/v1/agents/{agent_id}", json={"prompt": "You are terse."},
                           headers=admin_headers)
    assert r.json()["version"] == 2


async def test_null_in_patch_restores_default(client, admin_headers):
    agent = await _create(client, admin_headers, greeting="Hi there")
    r = await client.patch(f"/v1/agents/{agent['id']}", json={"greeting": None},
                           headers=admin_headers)
    assert r.json()["config"]["greeting"] == "Hello! How can I help you today?"


async def test_list_and_delete(client, admin_headers):
    a = await _create(client, admin_headers, name="a")
    b = await _create(client, admin_headers, name="b")
    r = await client.get("/v1/agents", headers=admin_headers)
    assert [x["name"] for x in r.json()["items"]] == ["a", "b"]

    r = await client.delete(f"/v1/agents/{a['id']}", headers=admin_headers)
    assert r.status_code == 204
    assert (await client.get(f"/v1/agents/{a['id']}", headers=admin_headers)).status_code == 404
    r = await client.get("/v1/agents", headers=admin_headers)
    assert [x["id"] for x in r.json()["items"]] == [b["id"]]
    r = await client.delete(f"/v1/agents/{a['id']}", headers=admin_headers)
    assert r.status_code == 404


async def test_delete_refused_while_numbers_map_to_agent(client, admin_headers):
    a = await _create(client, admin_headers)
    r = await client.put("/v1/numbers/+14155550100", json={"agent_id": a["id"]},
                         headers=admin_headers)
    assert r.status_code == 201
    r = await client.delete(f"/v1/agents/{a['id']}", headers=admin_headers)
    assert r.status_code == 409
    assert "+14155550100" in r.json()["detail"]


async def test_unknown_provider_is_422_naming_field(client, admin_headers):
    cfg = agent_config(llm={"provider": "no_such_llm"})
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert _fields(r) == {"llm.provider"}
    assert "no_such_llm" in r.json()["errors"][0]["message"]


async def test_negative_timeout_is_422_naming_field(client, admin_headers):
    r = await client.post("/v1/agents", json=agent_config(response_timeout_s=-1),
                          headers=admin_headers)
    assert _fields(r) == {"response_timeout_s"}


async def test_unknown_interruption_hold_is_422_naming_field(client, admin_headers):
    r = await client.post("/v1/agents", json=agent_config(interruption={"hold": "mute"}),
                          headers=admin_headers)
    assert _fields(r) == {"interruption.hold"}
    r = await client.post("/v1/agents", json=agent_config(
        semantic_vad={"eagerness": "low", "interruption_hold": "mute"}), headers=admin_headers)
    # The override, and the knob it would have set.
    assert _fields(r) == {"semantic_vad.interruption_hold", "interruption.hold"}
    created = await _create(client, admin_headers, semantic_vad="low")
    assert created["config"]["interruption"]["hold"] == "duck"


async def test_missing_prompt_is_422_naming_field(client, admin_headers):
    cfg = agent_config()
    del cfg["prompt"]
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert _fields(r) == {"prompt"}


async def test_bad_provider_option_and_fallback_named(client, admin_headers):
    cfg = agent_config(
        llm={"provider": "apitest_llm", "temperature": 9,
             "fallback": [{"provider": "apitest_llm", "tempreature": 1}]},
    )
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert _fields(r) == {"llm.temperature", "llm.fallback.0.tempreature"}


async def test_stt_recovery_settings_belong_to_the_top_level_stt_block(client, admin_headers):
    top = {"provider": "apitest_stt", "reconnect_attempts": 2, "reconnect_budget_s": 1.5,
           "replay_max_s": 12.0}
    created = await _create(client, admin_headers, stt=top)
    assert {k: created["config"]["stt"][k] for k in top if k != "provider"} == {
        "reconnect_attempts": 2, "reconnect_budget_s": 1.5, "replay_max_s": 12.0}
    r = await client.post("/v1/agents", json=agent_config(
        stt={"provider": "apitest_stt", "reconnect_attempts": 11}), headers=admin_headers)
    assert _fields(r) == {"stt.reconnect_attempts"}
    cfg = agent_config(stt={"provider": "apitest_stt",
                            "fallback": [{"provider": "apitest_stt", "replay_max_s": 5.0}]})
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert _fields(r) == {"stt.fallback.0.replay_max_s"}
    by_field = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "top-level 'stt' block" in by_field["stt.fallback.0.replay_max_s"]


async def test_several_errors_reported_together(client, admin_headers):
    cfg = agent_config(response_timeout_s=0, vad={"threshold": 2}, unknown_key=1,
                       llm={"provider": "nope"}, tts={"provider": "apitest_tts", "x": 1})
    r = await client.post("/v1/agents", json=cfg, headers=admin_headers)
    assert _fields(r) == {"response_timeout_s", "vad.threshold", "unknown_key", "llm.provider",
                          "tts.x"}
    r = await client.post("/v1/agents/validate", json=cfg, headers=admin_headers)
    assert {p["field"] for p in r.json()["problems"]} == {
        "response_timeout_s", "vad.threshold", "unknown_key", "llm.provider", "tts.x"}


async def test_invalid_patch_is_422_and_keeps_version(client, admin_headers):
    a = await _create(client, admin_headers)
    r = await client.patch(f"/v1/agents/{a['id']}", json={"tts": {"provider": "nope"}},
                           headers=admin_headers)
    assert _fields(r) == {"tts.provider"}
    r = await client.get(f"/v1/agents/{a['id']}", headers=admin_headers)
    assert r.json()["version"] == 1


async def test_malformed_json_is_problem(client, admin_headers):
    r = await client.post(
        "/v1/agents", content=b"{not json",
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["errors"][0]["field"] == "body"


async def test_missing_agent_is_404_problem(client, admin_headers):
    r = await client.get("/v1/agents/nope", headers=admin_headers)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["title"] == "Not Found" and "nope" in body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]


async def test_validate_reports_missing_credential_env_and_model(client, admin_headers,
                                                                 monkeypatch, tmp_path):
    monkeypatch.delenv("APITEST_KEY", raising=False)
    # An absolute model path, so the test never writes into the shared models dir.
    voice = tmp_path / "voice.onnx"
    cfg = agent_config(
        llm={"provider": "apitest_llm", "api_key": {"credential": "llm-key"},
             "fallback": [{"provider": "apitest_llm", "api_key": {"env": "APITEST_KEY"}}]},
        tts={"provider": "apitest_tts", "model_file": str(voice)},
    )
    r = await client.post("/v1/agents/validate", json=cfg, headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is False
    by_field = {p["field"]: p["message"] for p in body["problems"]}
    assert set(by_field) == {"llm.api_key", "llm.fallback.0.api_key", "tts.provider"}
    assert "llm-key" in by_field["llm.api_key"]
    assert "APITEST_KEY" in by_field["llm.fallback.0.api_key"]
    assert "voice.onnx" in by_field["tts.provider"]

    # Provide all three; now it validates.
    r = await client.put("/v1/credentials/llm-key", json={"value": "sk-something-secret"},
                         headers=admin_headers)
    assert r.status_code == 201
    monkeypatch.setenv("APITEST_KEY", "x")
    voice.write_bytes(b"model")
    r = await client.post("/v1/agents/validate", json=cfg, headers=admin_headers)
    assert r.json() == {"valid": True, "problems": []}


async def test_validate_saved_agent_and_dry_run_patch(client, admin_headers):
    a = await _create(client, admin_headers)
    r = await client.post(f"/v1/agents/{a['id']}/validate", headers=admin_headers)
    assert r.json() == {"valid": True, "problems": []}
    r = await client.post(f"/v1/agents/{a['id']}/validate",
                          json={"stt": {"provider": "missing_stt"}}, headers=admin_headers)
    body = r.json()
    assert body["valid"] is False
    assert [p["field"] for p in body["problems"]] == ["stt.provider"]
    # Nothing was saved.
    r = await client.get(f"/v1/agents/{a['id']}", headers=admin_headers)
    assert r.json()["version"] == 1


async def test_validate_reports_provider_module_that_fails_to_import(client, admin_headers,
                                                                     monkeypatch):
    from providers import registry

    monkeypatch.setitem(registry.BUILTINS, ("tts", "broken"), "providers.tts.no_such_module:X")
    r = await client.post("/v1/agents/validate",
                          json=agent_config(tts={"provider": "broken"}), headers=admin_headers)
    problems = r.json()["problems"]
    assert [p["field"] for p in problems] == ["tts.provider"]
    assert "not available" in problems[0]["message"]
    r = await client.post("/v1/agents", json=agent_config(tts={"provider": "broken"}),
                          headers=admin_headers)
    assert _fields(r) == {"tts.provider"}


async def test_openapi_has_agent_config_schema(client):
    r = await client.get("/openapi.json")
    schemas = r.json()["components"]["schemas"]
    assert "AgentConfig" in schemas
    assert "prompt" in schemas["AgentConfig"]["properties"]
    r = await client.get("/docs")
    assert r.status_code == 200
