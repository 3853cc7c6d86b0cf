"""`GET /metrics`: Prometheus text format (unauthenticated, like most exporters: expose it only
on a network your scraper reaches). It carries counts and timings, never call content."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app import metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
