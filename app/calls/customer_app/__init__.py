"""The agent's customer app: a WebSocket Phonebooth opens for each call.

The protocol is written down for app authors in docs/customer-websocket.md.

- `commands`: what the app may send, parsed into typed commands (bad input: `InvalidMessage`);
- `link`: the socket itself — signed connect with retries, one reconnect mid-call, a bounded
  send queue;
- `wire`: the call's events as the app receives them;
- `text_llm`: text mode, the app as the engine's LLM;
- `audio_relay`: audio mode, the app in place of the engine;
- `bridge`: one call's app — forwards events, runs websocket tools, carries out commands.
"""
