"""RFC 9457 problem details (`application/problem+json`) for every error the API returns.

Validation failures carry `errors: [{"field": "llm.provider", "message": "..."}]` with dotted
paths into the request body. Unhandled exceptions become a bare 500 with the request id, so the
log line can be found without leaking internals to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_LOCATIONS = ("body", "query", "path", "header", "cookie")

# The JSON Schema of every document `problem_response` writes (published in OpenAPI as
# `Problem`): optional members are left out rather than sent as null.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "A URI naming the problem type"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request path"},
        "request_id": {"type": "string", "description": "Also in the X-Request-ID header"},
        "errors": {
            "type": "array",
            "description": "Each failing field, as a dotted path into the request",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["type", "title", "status", "instance"],
    "additionalProperties": False,
}
PROBLEM_REF = "#/components/schemas/Problem"

_WHEN: dict[int, str] = {
    400: "Malformed request",
    401: "Missing, invalid or revoked API key",
    404: "Not found",
    409: "Conflicts with the current state, or with a concurrent change (retry)",
    413: "Too large",
    422: "Invalid request; `errors` names each failing field",
    500: "Internal error (the log line carries the request id)",
    502: "The telephony provider refused or failed the action",
    503: "Unavailable; retry later",
}


def problem_doc(status: int, description: str | None = None) -> dict[str, Any]:
    """The OpenAPI response object of a problem document."""
    return {
        "description": description or _WHEN.get(status) or HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
    }


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the problem statuses it raises itself (401, 422 and 500 are
    added to every operation where they apply by `app.api.openapi`)."""
    return {s: problem_doc(s) for s in statuses}


class ApiProblem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        type_: str = "about:blank",
    ) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers
        self.type = type_


def not_found(what: str, key: str) -> ApiProblem:
    return ApiProblem(404, f"{what} '{key}' not found")


def unprocessable(errors: list[dict[str, str]], detail: str = "invalid request") -> ApiProblem:
    return ApiProblem(422, detail, errors=errors)


def problem_response(
    request: Request,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    type_: str = "about:blank",
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    rid = request.scope.get("state", {}).get("request_id")
    if rid:
        body["request_id"] = rid
    if errors is not None:
        body["errors"] = errors
    out_headers = dict(headers or {})
    if rid:
        out_headers.setdefault("X-Request-ID", rid)
    return JSONResponse(body, status_code=status, headers=out_headers, media_type=PROBLEM_JSON)


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        if e.get("type") == "json_invalid":
            out.append({"field": "body", "message": f"invalid JSON: {e.get('msg', '')}"})
            continue
        if loc and loc[0] in _LOCATIONS:
            loc = loc[1:]
        # Never echo e["input"]: it may be a secret the client sent.
        out.append({"field": ".".join(str(p) for p in loc) or "body", "message": e["msg"]})
    return out


async def _api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(
        request, exc.status, title=exc.title, detail=exc.detail, errors=exc.errors,
        headers=exc.headers, type_=exc.type,
    )


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem_response(
        request, exc.status_code, detail=detail, headers=dict(exc.headers or {}) or None
    )


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(
        request, 422, detail="request validation failed", errors=validation_errors(exc)
    )


async def _integrity(request: Request, exc: Exception) -> JSONResponse:
    # A concurrent write won the race (same version number, same key). The client can retry.
    log.info("integrity conflict on %s %s", request.method, request.url.path)
    return problem_response(request, 409, detail="conflicting concurrent change; retry")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(request, 500, detail="internal error; see server logs")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiProblem, _api_problem)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(Exception, _unhandled)
