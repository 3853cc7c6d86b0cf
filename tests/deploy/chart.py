"""Render the Helm chart with Helm's own engine and validate what it makes.

Rendering uses the `helm-python-sdk` wheel (Helm's Go SDK built as a shared library, bound
with ctypes): the same template engine and functions as the `helm` binary, installed from PyPI.
Validation uses `kubernetes-validate`, which bundles the Kubernetes OpenAPI-derived JSON
schemas per release; strict schemas reject unknown fields (a typo in a pod spec fails).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "phonebooth"
RELEASE = "pb"
NAMESPACE = "voice"
# The chart's kubeVersion floor and the newest schemas the validator ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

RenderError = helm.HelmError


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce it."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered manifests (NOTES.txt and empty documents out)."""
    out: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        out.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return out


def values() -> dict[str, Any]:
    """The chart's default values.yaml."""
    out: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return out


def values_config() -> dict[str, Any]:
    """values.yaml's `config`: the server's config.yaml."""
    config: dict[str, Any] = values()["config"]
    return config


def validate(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError unless `obj` is valid (strict) on every
    supported Kubernetes version."""
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def only(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = only(objs, "Deployment")["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "phonebooth"]
    return c


def env(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Environment of the server container by name."""
    return {e["name"]: e for e in container(objs)["env"]}


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("section.key", value) for every leaf of a nested mapping."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v
