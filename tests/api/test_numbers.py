"""Phone numbers map to agents."""

from __future__ import annotations

from tests.api.providers import agent_config


async def _agent(client, headers) -> str:
    r = await client.post("/v1/agents", json=agent_config(), headers=headers)
    return r.json()["id"]


async def test_put_get_list_delete(client, admin_headers):
    a = await _agent(client, admin_headers)
    b = await _agent(client, admin_headers)
    r = await client.put("/v1/numbers/+14155550100", json={"agent_id": a}, headers=admin_headers)
    assert r.status_code == 201
    assert r.json()["agent_id"] == a
    # %2B is how clients that turn '+' into a space send it.
    r = await client.put("/v1/numbers/%2B14155550100", json={"agent_id": b},
                         headers=admin_headers)
    assert r.status_code == 200
    r = await client.get("/v1/numbers/+14155550100", headers=admin_headers)
    assert r.json()["agent_id"] == b
    await client.put("/v1/numbers/+442071838750", json={"agent_id": a}, headers=admin_headers)
    r = await client.get("/v1/numbers", headers=admin_headers)
    assert [n["number"] for n in r.json()["items"]] == ["+14155550100", "+442071838750"]
    r = await client.get("/v1/numbers", params={"agent_id": a}, headers=admin_headers)
    assert [n["number"] for n in r.json()["items"]] == ["+442071838750"]

    r = await client.delete("/v1/numbers/+14155550100", headers=admin_headers)
    assert r.status_code == 204
    assert (await client.get("/v1/numbers/+14155550100",
                             headers=admin_headers)).status_code == 404
    assert (await client.delete("/v1/numbers/+14155550100",
                                headers=admin_headers)).status_code == 404


async def test_invalid_number_and_unknown_agent_are_422(client, admin_headers):
    a = await _agent(client, admin_headers)
    for bad in ("14155550100", "+0123", "+1415555010012345", "+1-415-555"):
        r = await client.put(f"/v1/numbers/{bad}", json={"agent_id": a}, headers=admin_headers)
        assert r.status_code == 422, bad
        assert r.json()["errors"][0]["field"] == "number"
    r = await client.put("/v1/numbers/+14155550100", json={"agent_id": "ghost"},
                         headers=admin_headers)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "agent_id", "message": "agent 'ghost' does not exist"}]
