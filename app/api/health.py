"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import State

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

DB_PING_TIMEOUT_S = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready for calls: the database answers and every registered check passes (503 if not)."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(DB_PING_TIMEOUT_S):
            await state.db.ping()
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = f"error: {type(exc).__name__}"
    checks.update(await state.run_ready_checks())
    if state.draining:
        checks["draining"] = "shutting down; not accepting calls"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
