"""`GET /metrics`: what an operator's Prometheus scrapes."""

from __future__ import annotations

import httpx


async def test_metrics_expose_call_engine_and_event_numbers(client: httpx.AsyncClient) -> None:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    body = resp.text
    for name in (
        "phonebooth_active_calls",
        "phonebooth_turn_latency_seconds",
        "phonebooth_barge_in_latency_seconds",
        "phonebooth_playout_underruns_total",
        "phonebooth_event_loop_lag_seconds",
        # the shared VAD / end-of-turn executors, read at scrape time
        'phonebooth_inference_batch_size_bucket{le="1.0",model=',
        'phonebooth_inference_run_ms_count{model=',
        # event plumbing counters (webhook delivery failures among them)
        "phonebooth_webhook_delivery_attempt_failures_total",
    ):
        assert name in body, name


async def test_metrics_need_no_api_key_and_leak_no_secrets(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = (await client.get("/metrics")).text
    token = admin_headers["Authorization"].split()[1]
    assert token not in body
