"""The bus on Redis (`bus.url`): seats, owners, control requests, shared answers, events.

Keys and channels, all under `bus.key_prefix` (P):

- `P:seats` (hash): session id → "<node> reserved" (answered here, stream not up yet) or
  "<node> live" (this node hosts the call). Its length is the cluster's call count; taking a
  seat and the count check are one script, so two processes cannot both take the last seat.
- `P:node:<node>` (string with TTL `owner_ttl_s`): the node is alive. Renewed every
  `heartbeat_s`, when the node also writes its live seats again (so a Redis that restarted
  empty has them back within a heartbeat).
- `P:answer:<session>` (string with TTL): what the answer URL learnt, for the stream.
- `P:events` (channel): every event of every node; `P:ctl:<node>` and `P:reply:<node>`
  (channels): control requests to a node and their answers; `P:taken` (channel): a node took
  over a reservation (the call's stream connected to it, not to the node that answered).

Writes from the call path (seats, events) never wait: they are queued and sent in order by one
task, in pipelines, retried while Redis is away (events beyond `MAX_QUEUED_EVENTS` are dropped
and counted; seats never are). Each heartbeat also looks for dead nodes: a node whose key has
been gone for more than 1.5 heartbeats loses its seats, and the one process that removes a live
seat reports it through `on_node_lost` (the call is closed as `node_lost`). A node starting
under a name that still holds seats closes those calls the same way (its crash left them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.bus.base import ControlReply, ControlRequest
from app.calls.admission import Seats
from app.config import BusSettings

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 10_000
PIPELINE_BATCH = 256
ANSWER_TTL_S = 900  # the stream token expires long before; bounds what a lost call leaves
RETRY_MAX_S = 1.0
# How long `stop` waits for its tasks to end, and how often it cancels them again meanwhile:
# the Redis client can turn a cancellation that lands inside a command into a connection
# error, which the retry loops catch, so one cancel is not always enough.
STOP_TIMEOUT_S = 5.0
RECANCEL_S = 0.1
RESEND_S = 0.1

RESERVED = "reserved"
LIVE = "live"

# KEYS[1] seats; ARGV: session, value, max (0 = no cap). 1 = seated (already or now), 0 = full.
_TAKE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
local max = tonumber(ARGV[3])
if max > 0 and redis.call('HLEN', KEYS[1]) >= max then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] seats; ARGV: session, then the values it may hold to be removed. 1 = removed.
_FREE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
for i = 2, #ARGV do
  if v == ARGV[i] then redis.call('HDEL', KEYS[1], ARGV[1]); return 1 end
end
return 0
"""

EventSink = Callable[[dict[str, Any]], None]
ControlHandler = Callable[[ControlRequest], Awaitable[ControlReply]]
NodeLost = Callable[[str, str], Awaitable[None]]


def _seat(node: str, kind: str) -> str:
    return f"{node} {kind}"


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again any that swallowed it."""
    pending = {t for t in tasks if not t.done()}
    for t in pending:
        t.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_TIMEOUT_S
    while pending:
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for t in done:
            if not t.cancelled():
                t.exception()  # retrieved: a task that failed on its way out is over too
        if pending and loop.time() >= deadline:
            log.warning("bus: %d task(s) still running at stop: %s", len(pending),
                        ", ".join(sorted(t.get_name() for t in pending)))
            return
        for t in pending:
            t.cancel()


def _parse_seat(value: str) -> tuple[str, str]:
    node, _, kind = value.rpartition(" ")
    return node, kind


class RedisBus:
    def __init__(self, settings: BusSettings, node_id: str, *,
                 client: aioredis.Redis | None = None) -> None:
        assert settings.url is not None
        self.settings = settings
        self.node_id = node_id
        self.redis: aioredis.Redis = client or aioredis.Redis.from_url(
            settings.url.get_secret_value(), decode_responses=True,
            socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10)
        p = settings.key_prefix
        self.k_seats = f"{p}:seats"
        self.k_events = f"{p}:events"
        self.k_taken = f"{p}:taken"
        self._take = self.redis.register_script(_TAKE)
        self._free = self.redis.register_script(_FREE)
        # Set by app.bus.component before start().
        self.on_event: EventSink | None = None
        self.on_request: ControlHandler | None = None
        self.on_node_lost: NodeLost | None = None
        self._on_taken: list[Callable[[str], None]] = []
        # Seats this node holds: session -> kind (rewritten on every heartbeat).
        self._mine: dict[str, str] = {}
        self._out: collections.deque[tuple[str, Any]] = collections.deque()
        self._queued_events = 0
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()  # set while nothing is queued
        self._sent.set()
        self._replies: dict[str, asyncio.Future[ControlReply]] = {}
        self._missing: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False  # the loops' exit, for a cancellation the client swallowed
        self._handlers: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self.up = False
        # Counters for /metrics.
        self.events_dropped_total = 0
        self.nodes_lost_total = 0

    def _node_key(self, node: str) -> str:
        return f"{self.settings.key_prefix}:node:{node}"

    def _ctl(self, node: str) -> str:
        return f"{self.settings.key_prefix}:ctl:{node}"

    def _reply(self, node: str) -> str:
        return f"{self.settings.key_prefix}:reply:{node}"

    def _answer(self, session_id: str) -> str:
        return f"{self.settings.key_prefix}:answer:{session_id}"

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, connect_timeout_s: float = 10.0) -> None:
        """Connect (a Redis that is away at start is an error: the service would be split),
        then run the heartbeat, the listener and the writer."""
        try:
            await asyncio.wait_for(self._take_back_own_seats(), connect_timeout_s)
            await asyncio.wait_for(self._beat(), connect_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            await self.redis.aclose()
            raise RuntimeError(f"bus: cannot reach Redis at bus.url: {exc}") from exc
        self.up = True
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._listen(), name="bus-listen"),
            asyncio.create_task(self._write(), name="bus-write"),
            asyncio.create_task(self._heartbeat(), name="bus-heartbeat"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), connect_timeout_s)

    async def stop(self, flush_s: float = 2.0) -> None:
        if self._out and self.up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent.wait(), flush_s)
        self._stopping = True
        await _cancel_all([*self._tasks, *self._handlers])
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            # A clean exit: our calls are over (drained), so nothing for a survivor to close.
            async with asyncio.timeout(flush_s):
                await self.redis.delete(self._node_key(self.node_id))
        await self.redis.aclose()

    # -- seats (app.calls.admission.Seats) ---------------------------------------------------
    @property
    def seats(self) -> Seats:
        return self

    async def take(self, session_id: str, ttl_s: float) -> bool:
        try:
            ok = bool(await self._take(keys=[self.k_seats], args=[
                session_id, _seat(self.node_id, RESERVED), self.settings.max_concurrent_calls]))
        except (RedisError, OSError) as exc:
            # Calls go on while Redis is away: this process's own limit still holds.
            log.warning("bus: cluster seat for %s not checked (Redis: %s)", session_id, exc)
            ok = True
        if ok:
            self._mine.setdefault(session_id, RESERVED)
        return ok

    def hold(self, session_id: str) -> None:
        self._mine[session_id] = LIVE
        self._send("hold", session_id)

    def free(self, session_id: str) -> None:
        if self._mine.pop(session_id, None) is not None:
            self._send("free", session_id)

    def watch(self, on_taken: Callable[[str], None]) -> None:
        self._on_taken.append(on_taken)

    # -- owners, control, answers ------------------------------------------------------------
    async def owner(self, session_id: str) -> str | None:
        try:
            value = await self.redis.hget(self.k_seats, session_id)
            if value is None:
                return None
            node, kind = _parse_seat(str(value))
            if kind != LIVE:
                return None
            return node if await self.redis.exists(self._node_key(node)) else None
        except (RedisError, OSError) as exc:
            log.warning("bus: owner of %s unknown (Redis: %s)", session_id, exc)
            return None

    async def request(self, node: str, req: ControlRequest) -> ControlReply:
        rid = uuid.uuid4().hex
        fut: asyncio.Future[ControlReply] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        body = json.dumps({"id": rid, "reply_to": self.node_id, "session_id": req.session_id,
                           "action": req.action, "args": req.args})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.control_timeout_s
        try:
            # Nobody listening: the owner may be resubscribing after a Redis outage.
            while not await self.redis.publish(self._ctl(node), body):
                if loop.time() + RESEND_S > deadline:
                    return ControlReply(503, f"the process hosting the call ({node}) is not "
                                             "listening")
                await asyncio.sleep(RESEND_S)
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return ControlReply(504, f"the process hosting the call ({node}) did not answer "
                                     f"within {self.settings.control_timeout_s:g} s")
        except (RedisError, OSError) as exc:
            return ControlReply(503, f"the bus is unavailable ({type(exc).__name__})")
        finally:
            self._replies.pop(rid, None)

    async def share_answer(self, session_id: str, answer: dict[str, Any]) -> None:
        try:
            await self.redis.set(self._answer(session_id), json.dumps(answer, default=str),
                                 ex=ANSWER_TTL_S)
        except (RedisError, OSError) as exc:
            log.warning("bus: answer of %s not shared (Redis: %s)", session_id, exc)

    async def shared_answer(self, session_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.get(self._answer(session_id))
        except (RedisError, OSError) as exc:
            log.warning("bus: shared answer of %s unavailable (Redis: %s)", session_id, exc)
            return None
        return json.loads(raw) if raw else None

    # -- events --------------------------------------------------------------------------------
    def publish_event(self, env: dict[str, Any]) -> None:
        """Queue one envelope (its `to_dict()`) for every other process. Never waits."""
        if self._queued_events >= MAX_QUEUED_EVENTS:
            self.events_dropped_total += 1
            if self.events_dropped_total % 1000 == 1:
                log.warning("bus: Redis is behind; %d event(s) not shared with other "
                            "processes", self.events_dropped_total)
            return
        self._queued_events += 1
        self._send("event", json.dumps({"node": self.node_id, "env": env}, default=str))

    # -- internals -----------------------------------------------------------------------------
    def _send(self, op: str, arg: Any) -> None:
        self._out.append((op, arg))
        self._sent.clear()
        self._wake.set()

    async def _write(self) -> None:
        """Send queued writes in order, a pipeline at a time; retry a batch until it goes."""
        delay = 0.1
        while not self._stopping:
            if not self._out:
                self._sent.set()
                self._wake.clear()
                await self._wake.wait()
            batch = [self._out[i] for i in range(min(len(self._out), PIPELINE_BATCH))]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for op, arg in batch:
                        if op == "event":
                            pipe.publish(self.k_events, arg)
                        elif op == "hold":
                            pipe.hset(self.k_seats, arg, _seat(self.node_id, LIVE))
                            pipe.publish(self.k_taken, json.dumps(
                                {"node": self.node_id, "session_id": arg}))
                        else:  # free: only if still ours (another node may host it now)
                            pipe.delete(self._answer(arg))
                            await self._free(keys=[self.k_seats], args=[
                                arg, _seat(self.node_id, LIVE), _seat(self.node_id, RESERVED)],
                                client=pipe)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                if self.up:
                    log.warning("bus: Redis unavailable (%s); retrying", exc)
                self.up = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.up, delay = True, 0.1
            for op, _ in batch:
                self._out.popleft()
                if op == "event":
                    self._queued_events -= 1

    async def _beat(self) -> None:
        ttl_ms = int(self.settings.owner_ttl_s * 1000)
        live = [sid for sid, kind in self._mine.items() if kind == LIVE]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self._node_key(self.node_id), str(time.time()), px=ttl_ms)
            if live:
                pipe.hset(self.k_seats, mapping={sid: _seat(self.node_id, LIVE) for sid in live})
            await pipe.execute()

    async def _take_back_own_seats(self) -> None:
        """Seats under our name from before this start are calls a crash of ours left: close
        them now (a restart under the same node id would otherwise keep them forever)."""
        seats = {str(k): str(v) for k, v in (await self.redis.hgetall(self.k_seats)).items()}
        for sid, value in seats.items():
            node, _ = _parse_seat(value)
            if node == self.node_id and sid not in self._mine:
                await self._lost(sid, value, node)

    async def _lost(self, sid: str, value: str, node: str) -> None:
        """Remove a dead node's seat; if we removed it and it was a live call, report it."""
        if not await self._free(keys=[self.k_seats], args=[sid, value]):
            return  # another survivor got it first, or the node came back
        if _parse_seat(value)[1] != LIVE:
            return
        self.nodes_lost_total += 1
        log.warning("bus: node %s is gone; closing its call %s", node, sid)
        if self.on_node_lost is not None:
            try:
                await self.on_node_lost(sid, node)
            except Exception:
                log.exception("bus: could not close session %s of lost node %s", sid, node)

    async def _heartbeat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self._beat()
                await self._reap()
            except (RedisError, OSError) as exc:
                log.debug("bus: heartbeat failed: %s", exc)
            except Exception:
                log.exception("bus: heartbeat failed")

    async def _reap(self) -> None:
        """Take the seats of nodes gone for more than a heartbeat; report their live calls."""
        seats = {str(k): str(v) for k, v in (await self.redis.hgetall(self.k_seats)).items()}
        by_node: dict[str, list[tuple[str, str]]] = {}
        for sid, value in seats.items():
            node, _ = _parse_seat(value)
            if node != self.node_id:
                by_node.setdefault(node, []).append((sid, value))
        if not by_node:
            self._missing.clear()
            return
        nodes = list(by_node)
        async with self.redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(self._node_key(node))
            alive = await pipe.execute()
        now = time.monotonic()
        for node, is_alive in zip(nodes, alive, strict=True):
            if is_alive:
                self._missing.pop(node, None)
                continue
            # Missing on looks more than a heartbeat apart: a Redis that just restarted has not
            # lost the node, it only has not heard from it yet.
            first = self._missing.setdefault(node, now)
            if now - first < 1.5 * self.settings.heartbeat_s:
                continue
            for sid, value in by_node[node]:
                await self._lost(sid, value, node)
        for node in list(self._missing):
            if node not in by_node:
                del self._missing[node]

    async def _listen(self) -> None:
        """Receive events, control requests, replies and take-overs; resubscribe after a
        Redis outage."""
        delay = 0.1
        channels = [self.k_events, self.k_taken, self._ctl(self.node_id),
                    self._reply(self.node_id)]
        while not self._stopping:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self._subscribed.set()
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        try:
                            self._dispatch(msg["channel"], msg["data"])
                        except Exception:  # one bad message must not stop the listener
                            log.exception("bus: message on %s skipped", msg.get("channel"))
            except (RedisError, OSError) as exc:
                (log.warning if delay == 0.1 else log.debug)(
                    "bus: subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, channel: str, data: str) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            log.warning("bus: unreadable message on %s skipped", channel)
            return
        if channel == self.k_events:
            if body.get("node") != self.node_id and self.on_event is not None:
                self.on_event(body["env"])
        elif channel == self.k_taken:
            sid = body.get("session_id")
            if body.get("node") != self.node_id and self._mine.get(sid) == RESERVED:
                self._mine.pop(sid, None)
                for cb in self._on_taken:
                    cb(sid)
        elif channel == self._reply(self.node_id):
            fut = self._replies.get(body.get("id", ""))
            if fut is not None and not fut.done():
                fut.set_result(ControlReply(int(body["status"]), str(body.get("detail", "")),
                                            dict(body.get("data") or {})))
        else:
            task = asyncio.create_task(self._answer_request(body))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _answer_request(self, body: dict[str, Any]) -> None:
        try:
            req = ControlRequest(str(body["session_id"]), body["action"],
                                 dict(body.get("args") or {}))
        except (KeyError, TypeError):
            log.warning("bus: malformed control request skipped")
            return
        if self.on_request is None:
            reply = ControlReply(503, "this process is not taking control requests")
        else:
            try:
                reply = await self.on_request(req)
            except Exception as exc:
                log.exception("bus: control request %s failed", req.action)
                reply = ControlReply(502, f"{req.action} failed: {type(exc).__name__}")
        with contextlib.suppress(RedisError, OSError):
            await self.redis.publish(self._reply(str(body.get("reply_to"))), json.dumps(
                {"id": body.get("id"), "status": reply.status, "detail": reply.detail,
                 "data": reply.data}))
