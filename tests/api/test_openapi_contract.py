"""The OpenAPI document tells the truth: schemathesis drives every operation of the live app.

The real app (SQLite, lifespan, uvicorn on 127.0.0.1) runs in a thread of its own, because
schemathesis and Hypothesis call it synchronously. Each operation gets schema-conforming requests
(no 5xx, only declared status codes and content types, bodies matching their schemas) and, where
a request can be made invalid, schema-violating ones, which must be refused with a 4xx.
Generation is derandomized with a fixed example budget, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate as validate_spec
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.db.repos import sessions as sessions_repo
from app.main import create_app
from tests.api.providers import agent_config
from tests.conftest import TEST_ADMIN_KEY, TEST_SECRET_KEY
from tests.fakes.plivo_rest import FAKE_AUTH_ID, FAKE_AUTH_TOKEN, run_fake_plivo_rest
from tests.live_server import LiveServer, run_live_server

AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
# Examples per operation and mode: enough to walk every branch of the bodies' schemas at least
# once, small enough for the whole module to take about a minute on a busy machine.
MAX_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_SEEDS = itertools.count(1000)


def _settings(db_path: Path, models_dir: Path, secret_file: Path,
              plivo_api: str = "http://127.0.0.1:9/v1") -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{db_path}"},
        security={"secret_key": TEST_SECRET_KEY, "admin_api_key": TEST_ADMIN_KEY,
                  "secret_key_file": str(secret_file)},
        models={"dir": str(models_dir), "fetch_on_start": False},
        demo={"create_on_start": False},
        plivo={"auth_id": FAKE_AUTH_ID, "auth_token": FAKE_AUTH_TOKEN, "api_base_url": plivo_api},
    )


def _document() -> dict[str, Any]:
    # Building the document needs no database: the app is not started.
    app = create_app(_settings(Path("unused.db"), Path("unused"), Path("unused.key")))
    return app.openapi()


DOCUMENT = _document()
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items()
              for method in item if method in HTTP_METHODS]


@dataclass
class Server:
    live: LiveServer
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        return self.live.base_url

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the server's loop (its database engine lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path,
           models_dir: Path) -> Iterator[Server]:
    """The app under uvicorn (and a fake Plivo REST API for outbound calls) in a thread and
    event loop of their own, for the whole module."""
    tmp = tmp_path_factory.mktemp("contract")
    shutil.copy(_sqlite_template, tmp / "phonebooth.db")
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["stop"] = stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            async with run_fake_plivo_rest() as plivo:
                settings = _settings(tmp / "phonebooth.db", models_dir, tmp / "secret.key",
                                     plivo.api_base)
                async with run_live_server(settings) as live:
                    box["server"] = Server(live, loop)
                    started.set()
                    await stop.wait()
        except BaseException as exc:
            box["error"] = exc
            raise
        finally:
            started.set()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="contract-server")
    thread.start()
    assert started.wait(120), "live server did not start"
    if "error" in box:
        raise box["error"]
    yield box["server"]
    box["server"].loop.call_soon_threadsafe(box["stop"].set)
    thread.join(60)


@pytest.fixture(scope="module")
def api(server: Server) -> Any:
    """The schema as the live server publishes it."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    # Every request carries the admin key (AUTH); requests without it are tested below.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def test_document_is_valid_openapi() -> None:
    validate_spec(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")


def test_every_operation_declares_its_errors() -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    for method, path in OPERATIONS:
        op = DOCUMENT["paths"][path][method.lower()]
        responses = op["responses"]
        label = f"{method} {path}"
        if path.startswith("/v1/"):
            assert op.get("security"), f"{label} is not marked as needing an API key"
            assert "401" in responses, f"{label} does not declare 401"
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in responses, f"{label} does not declare 422"
        assert "500" in responses, f"{label} does not declare 500"
        for status, response in responses.items():
            if status.startswith(("4", "5")) and path != "/readyz":
                assert response["content"] == {"application/problem+json": {"schema": problem}}, (
                    f"{label} {status} is not a problem document")
    schemas = DOCUMENT["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert not any(path.startswith("/plivo") for path in DOCUMENT["paths"])


def test_agent_config_schema_is_closed_and_bounded() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    agent = schemas["AgentConfig"]
    assert agent["additionalProperties"] is False
    assert set(agent["required"]) == {"name", "prompt"}
    for name in ("TurnSettings", "VadSettings", "ToolConfig", "WebhookTarget", "IdleSettings"):
        assert schemas[name]["additionalProperties"] is False, name
    llm = schemas["LlmBlock"]["oneOf"]
    assert {b["properties"]["provider"]["const"] for b in llm} >= {"apitest_llm", "openai"}
    assert all(b["additionalProperties"] is False for b in llm)
    # Fallbacks nest two deep; the innermost block has no `fallback` at all.
    assert all("fallback" not in b["properties"] for b in schemas["LlmFallback2"]["oneOf"])
    assert not any(name == "ProviderBlock" for name in schemas)


def _seed(server: Server) -> dict[str, Any]:
    """Fresh resources to aim at, by path parameter name: random ids only ever find 404."""
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        agent = client.post("/v1/agents", json=agent_config()).json()
        number = f"+1415555{next(_SEEDS):04d}"
        client.put(f"/v1/numbers/{number}", json={"agent_id": agent["id"]}).raise_for_status()
        client.put("/v1/credentials/contract", json={"value": "s3cret"}).raise_for_status()
        key = client.post("/v1/api-keys", json={"name": "contract"}).json()

    async def session() -> str:
        async with server.live.state.db.transaction() as s:
            row = await sessions_repo.create(
                s, agent_id=agent["id"], agent_version=1, direction="inbound",
                from_number="+14155550111", to_number=number, status="active",
                state={"topic": "billing"})
            return row.id

    return {"agent_id": agent["id"], "version": 1, "number": number, "name": "contract",
            "key_id": key["id"], "session_id": server.run(session())}


def _run(api: Any, base_url: str, method: str, path: str, mode: GenerationMode,
         path_parameters: dict[str, Any] | None = None) -> None:
    operation = api[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode,
                                               path_parameters=path_parameters))
        case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks, timeout=30)

    check()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms(api: Any, server: Server, method: str, path: str) -> None:
    _run(api, server.base_url, method, path, GenerationMode.POSITIVE)
    if "{" in path:
        known = _seed(server)
        params = {k: v for k, v in known.items() if "{" + k + "}" in path}
        _run(api, server.base_url, method, path, GenerationMode.POSITIVE, params)
    try:
        _run(api, server.base_url, method, path, GenerationMode.NEGATIVE)
    except Unsatisfiable:
        pass  # nothing about this operation's request can be made invalid


def test_unauthenticated_requests_get_declared_401(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        for method, path in OPERATIONS:
            if not path.startswith("/v1/"):
                continue
            url = path.replace("{number}", "%2B14155550100").replace("{", "x").replace("}", "")
            r = client.request(method, url)
            assert r.status_code == 401, f"{method} {path}: {r.status_code}"
            assert r.headers["content-type"].startswith("application/problem+json")
