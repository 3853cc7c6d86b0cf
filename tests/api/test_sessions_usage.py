"""Sessions (with turns, tool calls, usage) and usage aggregates, read over REST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.db.repos import agents as agents_repo
from app.db.repos import sessions as sessions_repo
from app.db.repos import usage as usage_repo
from tests.api.providers import agent_config

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _seed(app) -> dict[str, str]:
    db = app.state.pb.db
    async with db.transaction() as s:
        a, _ = await agents_repo.create(s, agent_config(name="a"))
        b, _ = await agents_repo.create(s, agent_config(name="b"))
        ids = {"a": a.id, "b": b.id}
        for i in range(5):
            row = await sessions_repo.create(
                s, agent_id=a.id if i % 2 == 0 else b.id, agent_version=1,
                call_uuid=f"call-{i}", from_number="+14155550100", to_number="+14155550199",
                created_at=T0 + timedelta(minutes=i), status="active",
            )
            ids[f"s{i}"] = row.id
        s0 = ids["s0"]
        t0 = await sessions_repo.add_turn(s, s0, "assistant", "Hello!")
        t1 = await sessions_repo.add_turn(s, s0, "user", "Book me in", latency={"stt_ms": 80})
        await sessions_repo.add_turn(s, s0, "assistant", "Sure, when?", heard_text="Sure",
                                     interrupted=True)
        await sessions_repo.add_tool_call(s, s0, "call_abc", "check_calendar", {"day": "mon"},
                                          turn_id=t1.id)
        await sessions_repo.finish_tool_call(s, "call_abc", status="ok", result={"free": True},
                                             latency_ms=42.0)
        await sessions_repo.end(s, s0, end_reason="caller_hangup",
                                ended_at=T0 + timedelta(seconds=90))
        await sessions_repo.end(s, ids["s1"], status="failed", end_reason="stream_error",
                                ended_at=T0 + timedelta(minutes=2))
        for kind, provider, metric, qty, sid, day in [
            ("llm", "openai", "input_tokens", 100, s0, 0),
            ("llm", "openai", "input_tokens", 50, s0, 0),
            ("llm", "openai", "output_tokens", 20, s0, 0),
            ("tts", "openai", "characters", 300, s0, 1),
            ("stt", "deepgram", "audio_seconds", 12.5, ids["s1"], 1),
        ]:
            sess = await sessions_repo.get(s, sid)
            await usage_repo.record(
                s, kind=kind, provider=provider, metric=metric, quantity=qty, session_id=sid,
                agent_id=sess.agent_id, created_at=T0 + timedelta(days=day),
            )
        assert t0.idx == 0 and t1.idx == 1
    return ids


async def test_session_detail(client, admin_headers, app):
    ids = await _seed(app)
    r = await client.get(f"/v1/sessions/{ids['s0']}", headers=admin_headers)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ended" and body["end_reason"] == "caller_hangup"
    assert body["duration_s"] == 90.0
    assert [t["text"] for t in body["turns"]] == ["Hello!", "Book me in", "Sure, when?"]
    assert body["turns"][2]["heard_text"] == "Sure" and body["turns"][2]["interrupted"] is True
    assert body["turns"][1]["latency"] == {"stt_ms": 80}
    assert body["tool_calls"][0]["name"] == "check_calendar"
    assert body["tool_calls"][0]["result"] == {"free": True}
    assert len(body["usage"]) == 4
    assert body["created_at"].startswith("2026-03-01T12:00:00")
    assert body["created_at"].endswith(("Z", "+00:00"))
    r = await client.get("/v1/sessions/nope", headers=admin_headers)
    assert r.status_code == 404


async def test_session_list_filters_and_pages(client, admin_headers, app):
    ids = await _seed(app)
    r = await client.get("/v1/sessions", headers=admin_headers)
    assert [x["id"] for x in r.json()["items"]] == [ids[f"s{i}"] for i in (4, 3, 2, 1, 0)]

    r = await client.get("/v1/sessions", params={"agent_id": ids["a"]}, headers=admin_headers)
    assert [x["id"] for x in r.json()["items"]] == [ids["s4"], ids["s2"], ids["s0"]]
    r = await client.get("/v1/sessions", params={"status": "failed"}, headers=admin_headers)
    assert [x["id"] for x in r.json()["items"]] == [ids["s1"]]
    r = await client.get("/v1/sessions", headers=admin_headers, params={
        "from": "2026-03-01T12:01:00Z", "to": "2026-03-01T12:03:00"})
    assert [x["id"] for x in r.json()["items"]] == [ids["s2"], ids["s1"]]

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/sessions", params=params, headers=admin_headers)).json()
        seen += [x["id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [ids[f"s{i}"] for i in (4, 3, 2, 1, 0)]

    r = await client.get("/v1/sessions", params={"cursor": "garbage!"}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor"
    r = await client.get("/v1/sessions", params={"status": "weird"}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "status"


async def test_usage_grouping(client, admin_headers, app):
    ids = await _seed(app)

    async def usage(**params):
        r = await client.get("/v1/usage", params=params, headers=admin_headers)
        assert r.status_code == 200, r.text
        return [(i["key"], i.get("kind"), i["metric"], i["quantity"], i["records"])
                for i in r.json()["items"]]

    assert await usage(group_by="provider") == [
        ("deepgram", "stt", "audio_seconds", 12.5, 1),
        ("openai", "llm", "input_tokens", 150.0, 2),
        ("openai", "llm", "output_tokens", 20.0, 1),
        ("openai", "tts", "characters", 300.0, 1),
    ]
    assert await usage(group_by="day") == [
        ("2026-03-01", None, "input_tokens", 150.0, 2),
        ("2026-03-01", None, "output_tokens", 20.0, 1),
        ("2026-03-02", None, "audio_seconds", 12.5, 1),
        ("2026-03-02", None, "characters", 300.0, 1),
    ]
    by_agent = await usage(group_by="agent")
    assert (ids["a"], None, "input_tokens", 150.0, 2) in by_agent
    assert (ids["b"], None, "audio_seconds", 12.5, 1) in by_agent
    assert await usage(group_by="kind", **{"from": "2026-03-02T00:00:00Z"}) == [
        ("stt", None, "audio_seconds", 12.5, 1),
        ("tts", None, "characters", 300.0, 1),
    ]
    assert await usage(group_by="provider", to="2026-03-01T00:00:00Z") == []
    r = await client.get("/v1/usage", params={"group_by": "month"}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "group_by"
    r = await client.get("/v1/usage", params={"from": "2026-03-02"}, headers=admin_headers)
    assert r.json()["from"].startswith("2026-03-02T00:00:00")
