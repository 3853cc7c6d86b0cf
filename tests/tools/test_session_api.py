"""`GET/PATCH /v1/sessions/{id}/state` and the live-control endpoints."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from app.calls.registry import LiveCalls, live_calls
from tests.events.conftest import make_session
from tests.tools.conftest import RecordingControl


async def test_state_get_and_merge_patch(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    sid, _ = await make_session(app.state.pb.db, status="active")
    url = f"/v1/sessions/{sid}/state"
    r = await client.get(url, headers=admin_headers)
    assert r.status_code == 200 and r.json() == {}

    r = await client.patch(url, json={"customer": {"name": "Ada", "tier": "basic"}, "n": 1},
                           headers=admin_headers)
    assert r.status_code == 200 and r.json() == {"customer": {"name": "Ada", "tier": "basic"},
                                                 "n": 1}
    r = await client.patch(url, content=b'{"customer": {"tier": "gold"}, "n": null}',
                           headers={**admin_headers,
                                    "Content-Type": "application/merge-patch+json"})
    assert r.json() == {"customer": {"name": "Ada", "tier": "gold"}}
    r = await client.get(url, headers=admin_headers)
    assert r.json() == {"customer": {"name": "Ada", "tier": "gold"}}
    # The session detail shows the same state.
    r = await client.get(f"/v1/sessions/{sid}", headers=admin_headers)
    assert r.json()["state"] == {"customer": {"name": "Ada", "tier": "gold"}}


async def test_state_errors(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    sid, _ = await make_session(app.state.pb.db)
    url = f"/v1/sessions/{sid}/state"
    r = await client.patch(url, json=[1, 2], headers=admin_headers)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.patch(url, content=b"{nope", headers=admin_headers)
    assert r.status_code == 422
    r = await client.patch(url, json={"_transfer": {"target": "+1"}}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "_transfer"
    r = await client.patch(url, json={"blob": "x" * 70_000}, headers=admin_headers)
    assert r.status_code == 413
    r = await client.get("/v1/sessions/nope/state", headers=admin_headers)
    assert r.status_code == 404
    r = await client.get(url)
    assert r.status_code == 401


async def test_live_control_endpoints(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    state = app.state.pb
    if state.calls is None:
        state.calls = LiveCalls()
    sid, _ = await make_session(state.db, status="active")
    control = RecordingControl(sid)
    # The app's runner is the call host (its registry is `.live`) unless the test installed one.
    getattr(state.calls, "live", state.calls).register(sid, control)
    base = f"/v1/sessions/{sid}"

    # REST state changes reach the live call's state dict (what its tools read).
    r = await client.patch(f"{base}/state", json={"vip": True}, headers=admin_headers)
    assert r.status_code == 200 and control.state == {"vip": True}

    r = await client.post(f"{base}/say", json={"text": "Hold on.", "interruptible": False},
                          headers=admin_headers)
    assert r.status_code == 202 and r.json() == {"session_id": sid, "action": "say",
                                                 "status": "accepted"}
    for _ in range(100):
        if control.actions:
            break
        await asyncio.sleep(0.01)
    r = await client.post(f"{base}/inject", json={"text": "Caller is a VIP."},
                          headers=admin_headers)
    assert r.status_code == 202
    r = await client.post(f"{base}/transfer", json={"target": "not-a-number"},
                          headers=admin_headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target"
    r = await client.post(f"{base}/transfer", json={"target": "+44 20 7946 0000"},
                          headers=admin_headers)
    assert r.status_code == 202
    assert control.actions == [("say", "Hold on.", False), ("inject", "Caller is a VIP."),
                               ("transfer", "+442079460000", "cold", "")]
    # The transfer ended the call: further control is a conflict.
    r = await client.post(f"{base}/hangup", headers=admin_headers)
    assert r.status_code == 409


async def test_control_of_calls_not_hosted_here(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    state = app.state.pb
    if state.calls is None:
        state.calls = LiveCalls()
    live_elsewhere, _ = await make_session(state.db, status="active")
    ended, _ = await make_session(state.db, status="ended")
    r = await client.post(f"/v1/sessions/{live_elsewhere}/hangup", headers=admin_headers)
    assert r.status_code == 404 and "not live on this replica" in r.json()["detail"]
    r = await client.post(f"/v1/sessions/{ended}/say", json={"text": "hi"},
                          headers=admin_headers)
    assert r.status_code == 409
    r = await client.post("/v1/sessions/nope/hangup", headers=admin_headers)
    assert r.status_code == 404 and "not found" in r.json()["detail"]


async def test_hangup_with_reason_and_failures(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    state = app.state.pb
    if state.calls is None:
        state.calls = LiveCalls()
    sid, _ = await make_session(state.db, status="active")

    class Failing(RecordingControl):
        async def inject(self, text: str) -> None:
            raise RuntimeError("engine gone")

    control = Failing(sid)
    getattr(state.calls, "live", state.calls).register(sid, control)
    r = await client.post(f"/v1/sessions/{sid}/inject", json={"text": "x"},
                          headers=admin_headers)
    assert r.status_code == 502
    r = await client.post(f"/v1/sessions/{sid}/hangup", json={"reason": "supervisor"},
                          headers=admin_headers)
    assert r.status_code == 202 and control.actions == [("hangup", "supervisor")]


def test_live_call_lookup_accepts_a_registry_or_a_host_carrying_one() -> None:
    registry = LiveCalls()
    control = RecordingControl("x")
    registry.register("x", control)

    class Host:  # a CallRunner that keeps its calls in a LiveCalls
        live = registry

        async def run(self, info: object, transport: object) -> str:
            return "ended"

    class AppStateLike:
        calls: object = None

    s = AppStateLike()
    assert live_calls(s) is None
    s.calls = registry
    assert live_calls(s) is registry
    s.calls = Host()
    lookup = live_calls(s)
    assert lookup is not None and lookup.get("x") is control
    registry.unregister("x", RecordingControl("x"))  # not the registered one: kept
    assert "x" in registry and len(registry) == 1
    registry.unregister("x", control)
    assert lookup.get("x") is None
