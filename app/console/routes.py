"""`GET /console`: the web console's page and its static files, served with a strict CSP.

Everything the page loads comes from this server: no inline script or style, no third-party
origin, no framing. The files are read from the package, so an installed wheel serves them with
no build step.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse

router = APIRouter(tags=["console"], include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml", ".json": "application/json"}


def content_security_policy(request: Request) -> str:
    # `connect-src 'self'` covers same-origin WebSockets in current browsers; the explicit
    # ws(s) origin keeps older ones working too.
    host = request.headers.get("host", "")
    # The Host header is the client's: only a plain host[:port] may go into the policy.
    ws = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{ws}; media-src 'self' blob:; worker-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
        # The playground asks for the microphone; nothing else is needed.
        "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    }


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/console/{path:path}")
async def console_file(path: str, request: Request) -> FileResponse:
    if path in ("", "index.html") or "." not in Path(path).name:
        target = STATIC_DIR / "index.html"  # client-side routes (#/...) all load the page
    else:
        target = (STATIC_DIR / path).resolve()
        if STATIC_DIR not in target.parents or not target.is_file():
            raise HTTPException(404, "not found")
    media_type = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] \
        or "application/octet-stream"
    return FileResponse(target, media_type=media_type, headers=_headers(request))
