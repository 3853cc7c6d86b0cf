"""The Helm chart renders valid Kubernetes objects that fit the server they deploy.

Every value set is rendered by Helm's engine and each object validated against the strict
Kubernetes schemas; then the chart is checked against the app itself: the grace period covers
the drain, the probes and the autoscaling metric exist, every PHONEBOOTH__ variable and
ConfigMap key is a real setting (a rename in app/config.py breaks this test), and the
ConfigMap loads with the app's own settings loader.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from fastapi import FastAPI
from pydantic import BaseModel

from app import metrics
from app.config import CONFIG_ENV, BusSettings, Settings, load_settings
from app.server import make_server
from app.state import DRAIN_GRACE_S
from tests.deploy import chart, values_schema

ROOT = Path(__file__).resolve().parents[2]
DB_URL = "postgresql+asyncpg://phonebooth:pw@postgres.db.svc:5432/phonebooth"
REDIS_URL = "redis://:pw@redis.cache.svc:6379/0"
ACTIVE_CALLS_METRIC = metrics.ACTIVE_CALLS.describe()[0].name
SHARED = {"database": {"url": DB_URL}, "redis": {"url": REDIS_URL}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "replicas": {"replicaCount": 3, **SHARED},
    "hpa-active-calls": {"autoscaling": {"enabled": True}, **SHARED},
    "hpa-cpu": {"autoscaling": {"enabled": True, "metric": "cpu"}, **SHARED},
    "existing-secrets": {
        "replicaCount": 2,
        "secrets": {"existingSecret": "pb-keys"},
        "database": {"existingSecret": "pb-db", "existingSecretKey": "url"},
        "redis": {"existingSecret": "pb-redis", "existingSecretKey": "url"},
    },
    "ingress": {
        "ingress": {"enabled": True, "className": "nginx",
                    "hosts": [{"host": "calls.example.com",
                               "paths": [{"path": "/", "pathType": "Prefix"}]}],
                    "tls": [{"secretName": "calls-tls", "hosts": ["calls.example.com"]}]},
        "config": {"server": {"public_url": "https://calls.example.com"}},
        "secrets": {"adminApiKey": "pb_admin", "plivoAuthToken": "tok",
                    "plivoMainAuthToken": "main"},
    },
    "no-persistence": {"persistence": {"enabled": False}},
    "models-claim": {"models": {"existingClaim": "pb-models"}},
    "long-drain": {"config": {"limits": {"drain_timeout_s": 600.5}}, **SHARED},
}

# Settings that reach the pod only through Secrets or dedicated chart values (environment).
SECRET_SETTINGS = {"database.url", "security.secret_key", "security.admin_api_key",
                   "plivo.auth_token", "plivo.main_auth_token", "bus.url"}
# Settings the chart leaves at their defaults on purpose.
LEFT_TO_DEFAULT = {
    # One server process per pod: scale with replicas; probes and /metrics see one process.
    "server.workers",
    # A nested section with a secret in it: given whole through extraEnv from a Secret
    # (PHONEBOOTH__RECORDINGS__S3 as JSON), not the ConfigMap.
    "recordings.s3",
}
# Where values.config differs from config.example.yaml (the image sets the same paths).
K8S_DEFAULTS = {"server.log_format": "json", "security.secret_key_file": "/data/secret.key",
                "models.dir": "/opt/models"}


def _render_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return chart.objects(chart.render(values))


def _setting_field(env_name: str) -> tuple[str, str]:
    """PHONEBOOTH__SECTION__KEY -> ("section", "key")."""
    parts = env_name.removeprefix("PHONEBOOTH__").lower().split("__")
    assert len(parts) == 2, f"{env_name}: expected PHONEBOOTH__SECTION__KEY"
    return parts[0], parts[1]


def _is_setting(section: str, key: str) -> bool:
    field = Settings.model_fields.get(section)
    if field is None or not (isinstance(field.annotation, type)
                             and issubclass(field.annotation, BaseModel)):
        return False
    return key in field.annotation.model_fields


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pod_environment(objs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet would set it, Secret references resolved
    from the rendered Secret."""
    secrets = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "Secret"}
    out: dict[str, str] = {}
    for name, e in chart.env(objs).items():
        if "value" in e:
            out[name] = e["value"]
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        data = secrets[ref["name"]]
        if ref["key"] in data:
            out[name] = base64.b64decode(data[ref["key"]]).decode()
        else:
            assert ref.get("optional"), f"{name}: {ref} is missing and not optional"
    return out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_renders_valid_kubernetes_objects(name: str) -> None:
    objs = _render_objects(VALUE_SETS[name])
    kinds = sorted(o["kind"] for o in objs)
    for obj in objs:
        chart.validate(obj)
    for kind in ("ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                 "ServiceAccount"):
        assert kind in kinds, kinds
    assert ("HorizontalPodAutoscaler" in kinds) == name.startswith("hpa")
    assert ("Ingress" in kinds) == (name == "ingress")


def test_default_is_one_replica_on_sqlite_with_a_volume() -> None:
    objs = _render_objects({})
    deployment = chart.only(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    claim = chart.only(objs, "PersistentVolumeClaim")["metadata"]["name"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim
    env = chart.env(objs)
    assert "PHONEBOOTH__DATABASE__URL" not in env  # the image's SQLite file in /data
    assert "PHONEBOOTH__BUS__URL" not in env
    # Keys never set are never passed as empty strings (an empty admin key is no key).
    assert "PHONEBOOTH__SECURITY__ADMIN_API_KEY" not in env
    secret = chart.only(objs, "Secret")
    assert len(base64.b64decode(secret["data"]["secret-key"])) == 48


def test_models_volume_lets_the_pod_fetch_its_models() -> None:
    """The image carries no models: by default each pod downloads them into an emptyDir at
    the models dir (the root filesystem is read-only), and the startup probe waits for it."""
    objs = _render_objects({})
    c = chart.container(objs)
    pod = chart.only(objs, "Deployment")["spec"]["template"]["spec"]
    config = chart.values_config()["models"]
    assert config["fetch_on_start"] is True
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["mountPath"] == config["dir"]
    assert "readOnly" not in mounts["models"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}
    startup = c["startupProbe"]
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget_s >= chart.values()["models"]["startupSeconds"] >= 900
    claim = _render_objects(VALUE_SETS["models-claim"])
    volumes = {v["name"]: v for v in
               chart.only(claim, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "pb-models"}
    moved = chart.container(_render_objects({"config": {"models": {"dir": "/models"}}}))
    assert {m["name"]: m["mountPath"] for m in moved["volumeMounts"]}["models"] == "/models"


def test_replicas_share_database_and_bus_through_secrets() -> None:
    objs = _render_objects(VALUE_SETS["replicas"])
    deployment = chart.only(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                               "maxUnavailable": 0}
    assert not any(o["kind"] == "PersistentVolumeClaim" for o in objs)
    env = chart.env(objs)
    secret = chart.only(objs, "Secret")
    for name, url in (("PHONEBOOTH__DATABASE__URL", DB_URL), ("PHONEBOOTH__BUS__URL", REDIS_URL)):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert base64.b64decode(secret["data"][ref["key"]]).decode() == url
    # Passwords live in the Secret only.
    assert REDIS_URL not in str(deployment) and DB_URL not in str(deployment)


def test_existing_secrets_are_referenced_not_created() -> None:
    objs = _render_objects(VALUE_SETS["existing-secrets"])
    assert not any(o["kind"] == "Secret" for o in objs)
    env = chart.env(objs)
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert refs["PHONEBOOTH__SECURITY__SECRET_KEY"] == {"name": "pb-keys", "key": "secret-key"}
    # Optional keys may be absent from the user's Secret; the secret key may not.
    for name in ("PHONEBOOTH__SECURITY__ADMIN_API_KEY", "PHONEBOOTH__PLIVO__AUTH_TOKEN",
                 "PHONEBOOTH__PLIVO__MAIN_AUTH_TOKEN"):
        assert refs[name]["name"] == "pb-keys" and refs[name]["optional"] is True
    assert refs["PHONEBOOTH__DATABASE__URL"] == {"name": "pb-db", "key": "url"}
    assert refs["PHONEBOOTH__BUS__URL"] == {"name": "pb-redis", "key": "url"}


def test_ingress_keeps_websockets_open_longer_than_a_call() -> None:
    objs = _render_objects(VALUE_SETS["ingress"])
    ingress = chart.only(objs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    max_call_s = Settings().limits.max_call_duration_s
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout",
                "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(notes[key]) > max_call_s
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = chart.only(objs, "Service")
    assert backend == {"name": service["metadata"]["name"],
                       "port": {"number": service["spec"]["ports"][0]["port"]}}
    assert ingress["spec"]["tls"] == [{"secretName": "calls-tls", "hosts": ["calls.example.com"]}]


def test_hpa_scales_on_the_active_calls_gauge() -> None:
    objs = _render_objects(VALUE_SETS["hpa-active-calls"])
    hpa = chart.only(objs, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == ACTIVE_CALLS_METRIC
    assert hpa["spec"]["scaleTargetRef"]["name"] == chart.only(objs, "Deployment")["metadata"][
        "name"]
    assert "replicas" not in chart.only(objs, "Deployment")["spec"]  # the HPA owns it
    cpu = chart.only(_render_objects(VALUE_SETS["hpa-cpu"]), "HorizontalPodAutoscaler")
    assert cpu["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 2, "database": {"url": DB_URL}}, "set redis.url or redis.existingSecret"),
    ({"autoscaling": {"enabled": True}, "database": {"url": DB_URL}},
     "set redis.url or redis.existingSecret"),
    ({"replicaCount": 2, "redis": {"url": REDIS_URL}}, "set database.url"),
    ({"terminationGracePeriodSeconds": 40}, "terminationGracePeriodSeconds=40 is too short"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}, **SHARED},
     "maxReplicas must be >= autoscaling.minReplicas"),
], ids=["replicas-without-redis", "hpa-without-redis", "replicas-without-postgres",
        "short-grace", "hpa-max-below-min"])
def test_refuses_to_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(chart.RenderError, match=re.escape(message)):
        chart.render(values)


@pytest.mark.parametrize("drain_timeout_s", [0.0, 30.0, 600.5])
def test_grace_period_outlasts_the_drain(drain_timeout_s: float) -> None:
    objs = _render_objects({"config": {"limits": {"drain_timeout_s": drain_timeout_s}}})
    pod = chart.only(objs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    settings = load_settings(limits={"drain_timeout_s": drain_timeout_s})
    server = make_server(FastAPI(), settings, "127.0.0.1", 0)
    # SIGTERM after preStop: live calls get drain_timeout_s, then DRAIN_GRACE_S to be ended
    # politely, then uvicorn's graceful close.
    needed = (float(pre_stop[1]) + drain_timeout_s + DRAIN_GRACE_S
              + (server.config.timeout_graceful_shutdown or 0))
    assert pod["terminationGracePeriodSeconds"] > math.ceil(needed)


def test_explicit_grace_period_is_kept_when_long_enough() -> None:
    objs = _render_objects({"terminationGracePeriodSeconds": 900})
    assert chart.only(objs, "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 900


async def test_probe_and_metrics_paths_answer_on_the_app(client: httpx.AsyncClient) -> None:
    objs = _render_objects({})
    c = chart.container(objs)
    annotations = chart.only(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    port = c["ports"][0]
    assert port["name"] == "http"
    assert port["containerPort"] == Settings().server.port
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for path in {c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe",
                                                   "readinessProbe")}:
        r = await client.get(path)
        assert r.status_code == 200, (path, r.text)
    scrape = await client.get(annotations["prometheus.io/path"])
    assert scrape.status_code == 200
    assert f"# TYPE {ACTIVE_CALLS_METRIC} gauge" in scrape.text


def _all_env_names() -> set[str]:
    names: set[str] = set()
    for values in VALUE_SETS.values():
        names |= set(chart.env(_render_objects(values)))
    return {n for n in names if n.startswith("PHONEBOOTH__")}


_ENV_NAMES = sorted(_all_env_names())


@pytest.mark.parametrize("env_name", _ENV_NAMES)
def test_environment_names_are_settings(env_name: str) -> None:
    section, key = _setting_field(env_name)
    assert _is_setting(section, key), f"{env_name} is not a setting in app/config.py"


def test_values_config_mirrors_config_example() -> None:
    example = dict(chart.flatten(yaml.safe_load((ROOT / "config.example.yaml").read_text())))
    config = dict(chart.flatten(chart.values_config()))
    from_env = {".".join(_setting_field(n)) for n in _ENV_NAMES}
    assert set(config) <= set(example), "values.config keys missing from config.example.yaml"
    missing = set(example) - set(config) - SECRET_SETTINGS - from_env - LEFT_TO_DEFAULT
    assert not missing, f"config.example.yaml keys the chart does not carry: {sorted(missing)}"
    assert not set(config) & SECRET_SETTINGS, "secrets belong in the Secret, not the ConfigMap"
    for key, value in config.items():
        assert value == K8S_DEFAULTS.get(key, example[key]), key


def test_image_env_agrees_with_values_config() -> None:
    """The image's ENV wins over config.yaml: the chart's defaults must say the same."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    image_env = dict(re.findall(r"(PHONEBOOTH__\w+)=(\S+)", dockerfile))
    config = dict(chart.flatten(chart.values_config()))
    for name, value in image_env.items():
        key = ".".join(_setting_field(name))
        if key in config:
            assert str(config[key]).lower() == value.lower(), name
    uid = re.search(r"--uid (\d+)", dockerfile)
    assert uid is not None
    assert chart.values()["podSecurityContext"]["runAsUser"] == int(uid.group(1))


@pytest.mark.parametrize("name", ["default", "ingress", "long-drain"])
def test_configmap_loads_with_the_app_settings_loader(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = _render_objects(VALUE_SETS[name])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(chart.only(objs, "ConfigMap")["data"]["config.yaml"])
    for env_name, value in _pod_environment(objs).items():
        monkeypatch.setenv(env_name, value)
    monkeypatch.setenv(CONFIG_ENV, str(config_file))  # the ConfigMap mount, here
    settings = load_settings()
    expected = dict(chart.flatten(chart.values_config()))
    for key, value in chart.flatten(VALUE_SETS[name].get("config", {})):
        expected[key] = value
    for key, value in expected.items():
        section, field = key.split(".")
        assert getattr(getattr(settings, section), field) == value, key
    assert settings.security.secret_key is not None


def test_bus_environment_reaches_the_bus_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redis values land in the app's bus settings, and the chart's defaults are the app's:
    a replica of the chart behaves like `phonebooth serve` with bus.url set."""
    objs = _render_objects(VALUE_SETS["replicas"])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(chart.only(objs, "ConfigMap")["data"]["config.yaml"])
    for env_name, value in _pod_environment(objs).items():
        monkeypatch.setenv(env_name, value)
    monkeypatch.setenv(CONFIG_ENV, str(config_file))
    bus = load_settings().bus
    assert bus.enabled and bus.url is not None
    assert bus.url.get_secret_value() == REDIS_URL
    redis = chart.values()["redis"]
    assert (bus.key_prefix, bus.heartbeat_s, bus.owner_ttl_s, bus.control_timeout_s,
            bus.max_concurrent_calls) == (redis["keyPrefix"], redis["heartbeatS"],
                                          redis["ownerTtlS"], redis["controlTimeoutS"],
                                          redis["maxConcurrentCalls"])
    assert bus.model_dump(exclude={"url"}) == BusSettings().model_dump(exclude={"url"})


def test_values_schema_config_matches_the_settings() -> None:
    committed = json.loads(values_schema.SCHEMA.read_text())["properties"]["config"]
    assert committed == values_schema.config_schema(chart.values_config()), (
        "values.schema.json is stale: run python -m tests.deploy.values_schema")


@pytest.mark.parametrize(("values", "message"), [
    ({"config": {"limits": {"drain_timout_s": 5}}}, "'drain_timout_s' not allowed"),
    ({"config": {"limits": {"drain_timeout_s": -1}}}, "/config/limits/drain_timeout_s"),
    ({"config": {"server": {"log_format": "xml"}}}, "/config/server/log_format"),
    # Secrets never go into the ConfigMap.
    ({"config": {"security": {"admin_api_key": "pb_x"}}}, "'admin_api_key' not allowed"),
    ({"replicaCount": "3"}, "/replicaCount"),
    ({"autoscaling": {"metric": "rps"}}, "/autoscaling/metric"),
], ids=["misspelt-key", "negative-drain", "bad-enum", "secret-in-config", "string-replicas",
        "unknown-metric"])
def test_values_schema_refuses_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(chart.RenderError, match=re.escape(message)):
        chart.render(values)


def test_helm_lint_is_clean() -> None:
    report = helm.lint(str(chart.CHART))
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); 2 warnings, 3 errors.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


def test_notes_warn_about_the_default_public_url() -> None:
    notes = chart.render({})[f"{chart.CHART.name}/templates/NOTES.txt"]
    assert "public_url is still the default" in notes
    assert "terminationGracePeriodSeconds is 60" in notes
    ingress = chart.render(VALUE_SETS["ingress"])[f"{chart.CHART.name}/templates/NOTES.txt"]
    assert "public_url is still the default" not in ingress
    assert "https://calls.example.com/plivo/answer" in ingress


def test_pod_as_rendered_serves_and_drains(
    tmp_path: Path, database_url: str, models_dir: Path
) -> None:
    """Run the server process the way the chart's pod runs it (args, environment from the
    Secret, config.yaml from the ConfigMap) and take it through its probes and a SIGTERM."""
    port = _free_port()
    values = {**VALUE_SETS["ingress"], "database": {"url": database_url},
              "config": {"server": {"host": "127.0.0.1", "port": port,
                                    "public_url": "https://calls.example.com"}}}
    objs = _render_objects(values)
    c = chart.container(objs)
    assert c["ports"][0]["containerPort"] == port
    config_file = tmp_path / "config.yaml"
    config_file.write_text(chart.only(objs, "ConfigMap")["data"]["config.yaml"])
    environment = {k: v for k, v in os.environ.items()
                   if not k.upper().startswith("PHONEBOOTH")}
    # What the image's ENV provides (its paths exist only inside the image).
    environment |= {"PHONEBOOTH__MODELS__DIR": str(models_dir),
                    "PHONEBOOTH__SECURITY__SECRET_KEY_FILE": str(tmp_path / "secret.key")}
    environment |= _pod_environment(objs)
    environment["PHONEBOOTH_CONFIG"] = str(config_file)  # the ConfigMap's mount
    assert environment["PHONEBOOTH__DATABASE__URL"] == database_url
    pod = chart.only(objs, "Deployment")["spec"]["template"]["spec"]
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", *c["args"]], cwd=tmp_path,
                            env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(base + c["readinessProbe"]["httpGet"]["path"], timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the pod never became ready"
            time.sleep(0.2)
        assert httpx.get(base + c["livenessProbe"]["httpGet"]["path"]).status_code == 200
        # The admin key reached the server from the Secret.
        agents = httpx.get(base + "/v1/agents",
                           headers={"Authorization": f"Bearer {values['secrets']['adminApiKey']}"})
        assert agents.status_code == 200
        proc.send_signal(signal.SIGTERM)
        pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert proc.wait(timeout=pod["terminationGracePeriodSeconds"] - pre_stop) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read() if proc.stdout else ""
    # config.server.log_format from the ConfigMap: one JSON object per line.
    logs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert "stopped" in [entry["msg"] for entry in logs]
    assert values["secrets"]["adminApiKey"] not in output
