"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.deps import State

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

DB_PING_TIMEOUT_S = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str = Field(description="ready | degraded: database | not ready")
    checks: dict[str, str] = Field(description="Each check: `ok`, or what is wrong")


@router.get("/readyz", response_model=Readiness, responses={
    503: {"model": Readiness, "description": "Not ready for calls"}})
async def readyz(state: State) -> JSONResponse:
    """Ready for calls: every registered check passes (503 if not).

    A database that does not answer makes the server `degraded`, still ready (200): calls are
    answered from the cached number → agent table and their records wait in the outbox. Only
    without an outbox (no event service) is it a 503."""
    checks: dict[str, str] = {}
    degraded = False
    outbox = state.events.outbox if state.events is not None else None
    try:
        async with asyncio.timeout(DB_PING_TIMEOUT_S):
            await state.db.ping()
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readiness: database unreachable: %s", exc)
        if outbox is not None:
            outbox.report_db_error(exc)
            degraded = True
            checks["database"] = (f"degraded: database unreachable ({type(exc).__name__}); "
                                  f"{outbox.depth} record(s) wait in the outbox")
        else:
            checks["database"] = f"error: {type(exc).__name__}"
    checks.update(await state.run_ready_checks())
    if state.draining:
        checks["draining"] = "shutting down; not accepting calls"
    ready = all(v == "ok" or (k == "database" and degraded) for k, v in checks.items())
    status = ("degraded: database" if degraded else "ready") if ready else "not ready"
    return JSONResponse({"status": status, "checks": checks},
                        status_code=200 if ready else 503)
