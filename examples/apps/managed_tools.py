"""Managed mode: Phonebooth runs the conversation, this app runs two of its tools.

    python examples/apps/managed_tools.py --port 9000 --secret whsec_...

Point an agent at it (the secret is `python -m app.events.signing` on the server):

    websocket_url: ws://HOST:9000/
    mode: managed
    tools:
      - {name: order_status, description: "Status of an order", websocket: true,
         parameters: {type: object, properties: {order_id: {type: string}},
                      required: [order_id]}}
      - {name: refund_estimate, description: "Refund amount for an order (slow)",
         websocket: true, parameters: {type: object, properties: {order_id: {type: string}}}}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from app.voiceapp import Event, Session, VoiceApp

ORDERS = {
    "1001": {"status": "shipped", "carrier": "UPS", "eta": "Thursday", "total": 42.50},
    "1002": {"status": "processing", "eta": "next week", "total": 19.99},
}


def build_app(secret: str | None = None, *, slow_s: float = 8.0) -> VoiceApp:
    app = VoiceApp(signing_secret=secret)

    def order_status(session: Session, event: Event) -> None:
        """A sync handler (it runs in a thread): a dictionary lookup."""
        order = ORDERS.get(str((event.get("arguments") or {}).get("order_id", "")))
        if order is None:
            session.send_tool_error(event["id"], "no such order")
        else:
            session.send_tool_result(event["id"], order)

    async def refund_estimate(session: Session, event: Event) -> None:
        """A slow tool: ask for more time before the default 20 s wait runs out."""
        session.extend_wait(slow_s + 5)
        await asyncio.sleep(slow_s)  # a slow back office
        order = ORDERS.get(str((event.get("arguments") or {}).get("order_id", "")))
        refund = round(order["total"] * 0.9, 2) if order else 0.0
        session.send_tool_result(event["id"], {"refund": refund, "at": int(time.time())})

    tools = {"order_status": order_status, "refund_estimate": refund_estimate}

    @app.on("tool.called")
    async def tool_called(session: Session, event: Event) -> None:
        if not event.get("respond"):
            return  # another tool, for information only
        tool = tools.get(event.get("name", ""))
        if tool is None:
            session.send_tool_error(event["id"], f"unknown tool {event.get('name')!r}")
        elif asyncio.iscoroutinefunction(tool):
            await tool(session, event)
        else:
            await asyncio.to_thread(tool, session, event)

    @app.on("session.started")
    def started(session: Session, event: Event) -> None:
        logging.info("call %s from %s", session.call_id, event.get("from_number"))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="Phonebooth's signing secret (whsec_...)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    build_app(args.secret).run(args.host, args.port)


if __name__ == "__main__":
    main()
