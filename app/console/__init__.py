"""The web console at /console and its browser playground (WS /v1/playground).

The console is plain ES modules and CSS shipped inside the package (`static/`): no build step,
no CDN. It talks to the same REST and WebSocket API as any client, with the API key the operator
types in (kept in the tab's sessionStorage).
"""
