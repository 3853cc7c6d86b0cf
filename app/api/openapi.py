"""OpenAPI document tweaks: publish the AgentConfig JSON schema.

Agent routes take the config as a raw JSON object so that every problem (schema and provider
options) is reported in one 422; this puts the real AgentConfig schema back into /docs.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.agent_config import AgentConfig

AGENT_CONFIG_REF = "#/components/schemas/AgentConfig"


def json_body(ref: str = AGENT_CONFIG_REF, *, required: bool = True,
              media_types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is documented by a component schema."""
    return {
        "requestBody": {
            "required": required,
            "content": {m: {"schema": {"$ref": ref}} for m in media_types},
        }
    }


def _clean_refs(schema: dict[str, Any]) -> None:
    # FastAPI deep-merges openapi_extra into the generated `dict` body schema; keep only $ref.
    for path in schema.get("paths", {}).values():
        for op in path.values():
            content = op.get("requestBody", {}).get("content", {}) if isinstance(op, dict) else {}
            for media in content.values():
                ref = media.get("schema", {}).get("$ref")
                if ref:
                    media["schema"] = {"$ref": ref}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        agent = AgentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in agent.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["AgentConfig"] = agent
        _clean_refs(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
