"""Write a customer WebSocket app for Phonebooth (docs/customer-websocket.md).

    from app.voiceapp import VoiceApp

    app = VoiceApp(signing_secret="whsec_...")

    @app.on("tool.called")
    def lookup(session, event):
        session.send_tool_result(event["id"], {"balance": 42})

    app.run(port=9000)

The shape follows Plivo AgentStack's `VoiceApp`; examples in examples/apps/.
"""

from app.voiceapp.app import Server, VoiceApp
from app.voiceapp.event import Event
from app.voiceapp.session import Session

__all__ = ["Event", "Server", "Session", "VoiceApp"]
