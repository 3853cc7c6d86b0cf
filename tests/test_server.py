"""The real server: a drain phase runs before uvicorn closes connections."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.live_server import run_live_server


async def test_live_server_serves_http(live_server):
    async with httpx.AsyncClient(base_url=live_server.base_url) as c:
        r = await c.get("/readyz")
    assert r.status_code == 200
    assert live_server.state.settings.server.public_url == live_server.base_url


async def test_sigterm_drains_before_shutdown(settings):
    events: list[str] = []
    async with run_live_server(settings) as srv:
        state = srv.state
        release = asyncio.Event()

        async def drain_calls() -> None:
            events.append("drain started")
            # While draining, the server still answers (a live call's webhooks keep working)
            # but reports not ready, so a load balancer stops sending new calls.
            async with httpx.AsyncClient(base_url=srv.base_url) as c:
                r = await c.get("/readyz")
            events.append(f"readyz {r.status_code}")
            await release.wait()
            events.append("drain done")

        state.add_drain_hook(drain_calls)
        srv_obj = srv.server
        # What the SIGTERM handler calls.
        srv_obj.handle_exit(signal.SIGTERM, None)
        for _ in range(200):
            if "readyz 503" in events:
                break
            await asyncio.sleep(0.01)
        assert events == ["drain started", "readyz 503"]
        assert not srv_obj.should_exit  # uvicorn has not begun closing connections
        release.set()
        await asyncio.wait_for(srv.task, 10)
        assert events[-1] == "drain done"
        assert srv_obj.should_exit
