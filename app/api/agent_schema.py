"""The AgentConfig JSON Schema as published in OpenAPI: as strict as the save-time check.

Pydantic's own schema of `AgentConfig` describes a provider block loosely (any extra key is an
option) and recursively (a fallback holds blocks holding fallbacks ...). The check that runs on
save is stricter: the options must fit the named adapter's `Config`, and fallbacks nest at most
`MAX_FALLBACK_DEPTH` deep. So each kind's block is published as one alternative per installed
provider, `{provider: <name>, timeout_s, fallback, ...that adapter's options}` with no other keys,
and one component per nesting depth (`SttBlock`, `SttFallback1`, `SttFallback2`). The `s2s`
block is published the same way (`S2SBlock`: `{provider: <name>, ...that adapter's options}`,
no timeout or fallback), with the rule that next to it stt, llm and tts are given all or none,
and that `output: text` needs a `tts` block (which may then stand alone).
"""

from __future__ import annotations

import logging
from typing import Any

from app.agent_config import (
    MAX_FALLBACK_DEPTH,
    PROVIDER_KINDS,
    AgentConfig,
    ProviderBlock,
    S2SBlock,
    STTBlock,
)
from providers import registry

log = logging.getLogger(__name__)

REF = "#/components/schemas/"


def _block_name(kind: str, depth: int) -> str:
    return f"{kind.capitalize()}Block" if depth == 0 else f"{kind.capitalize()}Fallback{depth}"


def _hoist(schema: dict[str, Any], components: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Move pydantic's `$defs` into the document's components (under `prefix`)."""
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(prefix + name, definition)
    return schema


def _provider_options(kind: str, name: str, components: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter's option schema, its nested models as `<kind>.<name>.<Model>` components;
    None when the adapter cannot be loaded (saving a config that names it fails too)."""
    try:
        cls = registry.get(kind, name)
    except Exception as exc:
        log.info("%s provider %s left out of the OpenAPI document: %s", kind, name, exc)
        return None
    prefix = f"{kind}.{name}."
    return _hoist(cls.Config.model_json_schema(ref_template=f"{REF}{prefix}{{model}}"),
                  components, prefix)


def _block_schema(kind: str, depth: int, common: dict[str, Any],
                  components: dict[str, Any]) -> dict[str, Any]:
    branches = []
    for name in registry.names(kind):
        options = _provider_options(kind, name, components)
        if options is None:
            continue
        properties: dict[str, Any] = {
            "provider": {"const": name},
            "timeout_s": common["timeout_s"],
            **options.get("properties", {}),
        }
        if kind == "stt" and depth == 0:
            # The chain's recovery settings (see STTBlock): top-level block only.
            properties.update(common["stt_recovery"])
        if depth < MAX_FALLBACK_DEPTH:
            properties["fallback"] = {
                "type": "array",
                "description": "Providers tried in order when this one fails or is slower "
                "than its timeout_s",
                "items": {"$ref": REF + _block_name(kind, depth + 1)},
            }
        branches.append({
            "title": f"{kind} provider {name}",
            "type": "object",
            "properties": properties,
            "required": ["provider", *options.get("required", [])],
            "additionalProperties": False,
        })
    what = "provider block" if depth == 0 else f"fallback provider (nesting depth {depth})"
    return {"title": _block_name(kind, depth), "description": f"A {kind} {what}: `provider` "
            "names the adapter; the other keys are its options.", "oneOf": branches}


def _s2s_schema(components: dict[str, Any]) -> dict[str, Any]:
    branches = []
    for name in registry.names("s2s"):
        options = _provider_options("s2s", name, components)
        if options is None:
            continue
        branches.append({
            "title": f"s2s provider {name}",
            "type": "object",
            "properties": {"provider": {"const": name}, **options.get("properties", {})},
            "required": ["provider", *options.get("required", [])],
            "additionalProperties": False,
        })
    return {"title": S2SBlock.__name__, "description": "A speech-to-speech model in place of "
            "stt/llm/tts: `provider` names the adapter; the other keys are its options.",
            "type": "object", "required": ["provider"], "oneOf": branches}


# What `s2s_cascade_errors` checks: with an s2s block, stt, llm and tts (its call-start
# fallback) are all given or none is; `output: text` needs tts, which may then be alone.
_TEXT_OUTPUT = {"properties": {"s2s": {"required": ["output"],
                                       "properties": {"output": {"const": "text"}}}}}
_S2S_CASCADE = {
    "if": {"required": ["s2s"], "properties": {"s2s": {"type": "object"}}},
    "then": {
        "anyOf": [
            {"required": list(PROVIDER_KINDS)},
            {"not": {"anyOf": [{"required": [kind]} for kind in PROVIDER_KINDS]}},
            {**_TEXT_OUTPUT, "required": ["tts"],
             "not": {"anyOf": [{"required": [kind]} for kind in PROVIDER_KINDS
                               if kind != "tts"]}},
        ],
        "if": _TEXT_OUTPUT,
        "then": {"required": ["tts"]},
    },
}


def agent_config_components() -> dict[str, Any]:
    """`AgentConfig` and every component it refers to."""
    components: dict[str, Any] = {}
    agent = _hoist(AgentConfig.model_json_schema(ref_template=REF + "{model}"), components)
    common = dict(components.pop(ProviderBlock.__name__)["properties"])
    stt_props = components.pop(STTBlock.__name__)["properties"]
    common["stt_recovery"] = {k: stt_props[k] for k in STTBlock.model_fields
                              if k not in ProviderBlock.model_fields}
    for kind in PROVIDER_KINDS:
        for depth in range(MAX_FALLBACK_DEPTH + 1):
            components[_block_name(kind, depth)] = _block_schema(kind, depth, common, components)
        agent["properties"][kind] = {"$ref": REF + _block_name(kind, 0)}
    components[S2SBlock.__name__] = _s2s_schema(components)
    agent.update(_S2S_CASCADE)
    components["AgentConfig"] = agent
    return components
