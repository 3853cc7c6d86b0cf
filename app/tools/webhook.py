"""Webhook tools: the LLM's arguments, validated, POSTed (signed) to the user's endpoint.

Request: `{"session_id", "call_uuid", "call_id", "tool", "arguments", "state"}` as JSON with
`X-Phonebooth-Signature: t=<unix>,v1=<hmac>` (see app.events.signing) plus the tool's own
configured headers. For `method: GET` the same JSON document travels in the `payload` query
parameter and the signature covers exactly those bytes.

Response: any 2xx. A JSON body is the result the LLM sees; other bodies are passed as text. If a
JSON object carries `"state_patch": {...}`, that key is removed from the result and applied to
the call's state as a JSON merge patch. Non-2xx, timeouts and unreachable endpoints become
structured errors (ToolExecutionError) instead of exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
import jsonschema
from jsonschema.exceptions import SchemaError

from app.agent_config import ToolConfig
from app.events.signing import (
    DEFAULT_TOLERANCE_S,
    SignatureError,
    signature_headers,
    verify_signature,
)
from app.tools.errors import ToolExecutionError

MAX_RESPONSE_BYTES = 1_000_000
STATE_PATCH_KEY = "state_patch"
USER_AGENT = "Phonebooth-Tools/1"
_validators: dict[str, jsonschema.protocols.Validator] = {}


def validate_arguments(schema: dict[str, Any], arguments: Any) -> list[dict[str, str]]:
    """Every way `arguments` breaks `schema`, as [{"field": "a.b", "message": ...}]."""
    key = json.dumps(schema, sort_keys=True, default=str)
    validator = _validators.get(key)
    if validator is None:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            return [{"field": "(schema)",
                     "message": f"the tool's schema is invalid: {exc.message}"}]
        validator = cls(schema)
        if len(_validators) > 1024:
            _validators.clear()
        _validators[key] = validator
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    return [
        {"field": ".".join(str(p) for p in e.absolute_path) or "(root)", "message": e.message}
        for e in errors
    ]


def verify_tool_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """For receivers: True when `body` was signed by Phonebooth within the replay window."""
    try:
        verify_signature(secret, headers, body, tolerance_s=tolerance_s)
    except SignatureError:
        return False
    return True


def split_state_patch(result: Any) -> tuple[Any, dict[str, Any] | None]:
    if isinstance(result, dict) and isinstance(result.get(STATE_PATCH_KEY), dict):
        rest = {k: v for k, v in result.items() if k != STATE_PATCH_KEY}
        return (rest or {"ok": True}), result[STATE_PATCH_KEY]
    return result, None


async def call_webhook_tool(
    tool: ToolConfig,
    arguments: dict[str, Any],
    *,
    client: httpx.AsyncClient,
    signing_secret: str,
    session_id: str,
    call_uuid: str = "",
    call_id: str = "",
    state: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """POST the call to the tool's webhook; return (result for the LLM, state patch or None).

    Raises ToolExecutionError for every failure the LLM should hear about.
    """
    hook = tool.webhook
    if hook is None:
        raise ToolExecutionError("internal", f"tool '{tool.name}' has no webhook")
    body = json.dumps({
        "session_id": session_id,
        "call_uuid": call_uuid,
        "call_id": call_id,
        "tool": tool.name,
        "arguments": arguments,
        "state": state or {},
    }, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    headers = {
        "User-Agent": USER_AGENT,
        **hook.headers,
        **signature_headers(signing_secret, body),
    }
    request_kwargs: dict[str, Any] = {"headers": headers, "timeout": hook.timeout_s}
    if hook.method == "GET":
        request_kwargs["params"] = {"payload": body.decode()}
    else:
        headers["Content-Type"] = "application/json"
        request_kwargs["content"] = body
    try:
        async with client.stream(hook.method, hook.url, **request_kwargs) as resp:
            raw = bytearray()
            async for chunk in resp.aiter_bytes():
                raw.extend(chunk)
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise ToolExecutionError(
                        "bad_response", f"response larger than {MAX_RESPONSE_BYTES} bytes"
                    )
            status = resp.status_code
            content_type = resp.headers.get("content-type", "")
            charset = resp.charset_encoding or "utf-8"
    except httpx.TimeoutException:
        raise ToolExecutionError(
            "timeout", f"the tool did not answer within {hook.timeout_s:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise ToolExecutionError("unreachable", f"could not reach the tool: {type(exc).__name__}") \
            from None
    text = bytes(raw).decode(charset, errors="replace")
    if not 200 <= status < 300:
        raise ToolExecutionError(
            "http_error", f"the tool answered HTTP {status}", status=status, body=text[:500]
        )
    if not text.strip():
        return {"ok": True}, None
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            return split_state_patch(json.loads(text))
        except json.JSONDecodeError:
            if "json" in content_type:
                raise ToolExecutionError("bad_response", "the tool returned invalid JSON") \
                    from None
    return text, None
