"""The OpenAPI document, made to tell the truth about errors and agent configs.

- Every error is `application/problem+json` (`Problem`), never FastAPI's default
  `HTTPValidationError`: each operation lists 401 when it needs an API key, 422 when it has
  parameters or a body, 500 always, plus what its route declares with `problems(...)`.
- Agent routes take the config as a raw JSON object so that every problem (schema and provider
  options) is reported in one 422; this publishes the real `AgentConfig` schema for them
  (see app.api.agent_schema) and for the `config` of agents and versions in responses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.agent_schema import agent_config_components
from app.api.problems import PROBLEM_SCHEMA, problem_doc

REF = "#/components/schemas/"
AGENT_CONFIG_REF = REF + "AgentConfig"
# Response models whose `config` member is a stored AgentConfig.
_CONFIG_HOLDERS = ("AgentOut", "AgentVersionOut")
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def json_body(ref: str = AGENT_CONFIG_REF, *, required: bool = True,
              media_types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is documented by a component schema."""
    return {"requestBody": {
        "required": required,
        "content": {m: {"schema": {"$ref": ref}} for m in media_types},
    }}


def object_body(description: str, *, required: bool = True,
                media_types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    """`openapi_extra` for a body that is any JSON object (a merge patch, a draft config)."""
    return {"requestBody": {
        "required": required, "description": description,
        "content": {m: {"schema": {"type": "object"}} for m in media_types},
    }}


def _clean_bodies(op: dict[str, Any]) -> None:
    # FastAPI deep-merges openapi_extra into the generated `dict` body schema; keep only what
    # the route declared.
    for media in op.get("requestBody", {}).get("content", {}).values():
        schema = media.get("schema", {})
        if "$ref" in schema:
            media["schema"] = {"$ref": schema["$ref"]}
        elif schema.get("type") == "object":
            media["schema"] = {"type": "object"}


def _complete_responses(op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    if op.get("requestBody"):
        # A body that cannot even be decoded (not UTF-8, cut short) never reaches validation.
        responses.setdefault("400", problem_doc(400, "The body could not be read"))
    if op.get("security"):
        responses.setdefault("401", problem_doc(401))
    if op.get("parameters") or op.get("requestBody") or "422" in responses:
        responses["422"] = problem_doc(422)
    responses.setdefault("500", problem_doc(500))
    op["responses"] = dict(sorted(responses.items()))


def build_document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components["Problem"] = PROBLEM_SCHEMA
    components.update(agent_config_components())
    for name in _CONFIG_HOLDERS:
        if name in components:
            components[name]["properties"]["config"] = {"$ref": AGENT_CONFIG_REF}
    for path in schema.get("paths", {}).values():
        for method, op in path.items():
            if method in _METHODS:
                _clean_bodies(op)
                _complete_responses(op)
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
