"""The `config` part of the chart's values.schema.json, generated from the server's Settings.

Helm checks values against values.schema.json before rendering, so a misspelt or mistyped
`config.*` key fails `helm install` instead of being ignored by the server. Each section
allows exactly the keys values.yaml carries, with the types and bounds of app/config.py.

Regenerate after changing app/config.py or values.config:
    python -m tests.deploy.values_schema
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from app.config import Settings
from tests.deploy.chart import CHART, values_config

SCHEMA = CHART / "values.schema.json"
# Annotations that say nothing to a values check (defaults differ in k8s; titles are noise).
_DROPPED = {"title", "default", "writeOnly", "format"}


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if k not in _DROPPED}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def config_schema(config_values: dict[str, Any]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for section, keys in config_values.items():
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), section
        props = model.model_json_schema()["properties"]
        sections[section] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: _clean(props[k]) for k in keys},
        }
    out = {"type": "object", "additionalProperties": False, "properties": sections}
    assert "$ref" not in json.dumps(out), "inline every type: older Helm resolves no $defs"
    return out


def main() -> None:
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["config"] = config_schema(values_config())
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {SCHEMA}")


if __name__ == "__main__":
    main()
