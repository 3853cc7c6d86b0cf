"""/v1/agents: versioned agent configs.

Every change (PATCH) stores a new immutable version; sessions pin the version they ran with.
Create and patch validate the whole config (provider options included) and answer 422 naming
each failing field; `validate` additionally checks credentials and model files without saving.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status
from pydantic import ValidationError

from app.agent_config import AgentConfig, validate_json_strict
from app.agent_validation import Problem, check_config, dry_run
from app.api.deps import DbSession, Offset, State
from app.api.openapi import json_body, object_body
from app.api.problems import ApiProblem, not_found, problems, unprocessable
from app.api.schemas import (
    AgentList,
    AgentOut,
    AgentVersionList,
    AgentVersionOut,
    ProblemItem,
    ValidationResult,
)
from app.db.models import Agent, AgentVersion
from app.db.repos import agents as agents_repo
from app.db.repos import credentials as credentials_repo
from app.db.repos import numbers as numbers_repo
from app.merge_patch import apply_merge_patch
from app.tools.builtins import builtin_option_errors
from pipelines.turn.presets import patch_base

router = APIRouter(prefix="/agents", tags=["agents"])

# Taken as a raw object (documented as AgentConfig in OpenAPI) so schema and provider problems
# are reported together in one 422.
ConfigBody = Annotated[dict[str, Any], Body()]

# Documented (with both media types) by the route's openapi_extra.
MergePatch = Annotated[dict[str, Any], Body(media_type="application/merge-patch+json")]


def _out(agent: Agent, version: AgentVersion) -> AgentOut:
    return AgentOut(
        id=agent.id, name=agent.name, version=version.version, config=version.config,
        created_at=agent.created_at, updated_at=agent.updated_at,
    )


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise unprocessable([p.as_dict() for p in problems], "invalid agent config")


def _tool_problems(config: AgentConfig) -> list[Problem]:
    """Builtin tools' options against their option models (e.g. collect_phone's
    default_country), as `tools.<i>.options.<name>`."""
    return [Problem(f"tools.{i}.{e['field']}", e["message"])
            for i, tool in enumerate(config.tools) for e in builtin_option_errors(tool)]


def _validated(data: Any) -> dict[str, Any]:
    config, problems = check_config(data)
    _raise_problems(problems)
    assert config is not None
    _raise_problems(_tool_problems(config))
    return config.model_dump(mode="json")


async def _get_agent(s: DbSession, agent_id: str) -> Agent:
    agent = await agents_repo.get(s, agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    return agent


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=AgentOut,
    responses=problems(409), openapi_extra=json_body(),
)
async def create_agent(config: ConfigBody, s: DbSession, response: Response) -> AgentOut:
    """Create an agent; its config (an AgentConfig) becomes version 1. An invalid config gets
    422 with every failing field in `errors`."""
    data = _validated(config)
    agent, version = await agents_repo.create(s, data)
    await s.commit()
    response.headers["Location"] = f"/v1/agents/{agent.id}"
    return _out(agent, version)


@router.get("", response_model=AgentList)
async def list_agents(
    s: DbSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AgentList:
    items = []
    for agent in await agents_repo.list_agents(s, limit=limit, offset=offset):
        items.append(_out(agent, await agents_repo.current_version(s, agent)))
    return AgentList(items=items)


async def _dry_run(state: State, s: DbSession, data: Any) -> ValidationResult:
    async def existing(names: set[str]) -> set[str]:
        return await credentials_repo.existing_names(s, names)

    problems = await dry_run(
        data, existing_credentials=existing, models_dir=state.settings.models_dir
    )
    try:
        problems += _tool_problems(validate_json_strict(data))
    except ValidationError:
        pass  # reported by dry_run
    return ValidationResult(
        valid=not problems, problems=[ProblemItem(**p.as_dict()) for p in problems]
    )


@router.post(
    "/validate", response_model=ValidationResult,
    # Any object: reporting what is wrong with an invalid config is the point.
    openapi_extra=object_body("A draft AgentConfig; it need not be valid"),
)
async def validate_new_agent(state: State, s: DbSession, config: ConfigBody) -> ValidationResult:
    """Dry-run an unsaved config: schema, provider names and options, referenced credentials,
    model files. Always 200; `problems` lists what is wrong."""
    return await _dry_run(state, s, config)


@router.get("/{agent_id}", response_model=AgentOut, responses=problems(404))
async def get_agent(agent_id: str, s: DbSession) -> AgentOut:
    agent = await _get_agent(s, agent_id)
    return _out(agent, await agents_repo.current_version(s, agent))


@router.patch(
    "/{agent_id}", response_model=AgentOut, responses=problems(404, 409),
    openapi_extra=object_body(
        "JSON Merge Patch (RFC 7396) of the AgentConfig: objects merge, null removes a key "
        "(restoring its default), arrays replace.",
        media_types=("application/merge-patch+json", "application/json")),
)
async def patch_agent(agent_id: str, patch: MergePatch, s: DbSession) -> AgentOut:
    """Apply a merge patch to the current config and save the result as a new version.
    A patch that changes nothing creates no version."""
    agent = await agents_repo.get_for_update(s, agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    current = await agents_repo.current_version(s, agent)
    data = _validated(apply_merge_patch(patch_base(current.config, patch), patch))
    if data == current.config:
        return _out(agent, current)
    version = await agents_repo.add_version(s, agent, data)
    await s.commit()
    return _out(agent, version)


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=problems(404, 409))
async def delete_agent(agent_id: str, s: DbSession) -> Response:
    """Soft-delete: the agent disappears from the API; past sessions keep their versions.
    Refused (409) while phone numbers still point at it."""
    agent = await _get_agent(s, agent_id)
    mapped = await numbers_repo.list_numbers(s, agent_id=agent_id, limit=20)
    if mapped:
        raise ApiProblem(
            409,
            "phone numbers still map to this agent: "
            + ", ".join(n.number for n in mapped)
            + "; delete or remap them first",
        )
    await agents_repo.soft_delete(s, agent)
    await s.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{agent_id}/versions", response_model=AgentVersionList, responses=problems(404))
async def list_versions(agent_id: str, s: DbSession) -> AgentVersionList:
    await _get_agent(s, agent_id)
    rows = await agents_repo.list_versions(s, agent_id)
    return AgentVersionList(items=[AgentVersionOut.model_validate(v) for v in rows])


@router.get("/{agent_id}/versions/{version}", response_model=AgentVersionOut,
            responses=problems(404))
async def get_version(agent_id: str, version: int, s: DbSession) -> AgentVersionOut:
    await _get_agent(s, agent_id)
    row = await agents_repo.get_version(s, agent_id, version)
    if row is None:
        raise not_found("version", f"{agent_id}/{version}")
    return AgentVersionOut.model_validate(row)


@router.post("/{agent_id}/validate", response_model=ValidationResult, responses=problems(404))
async def validate_agent(
    agent_id: str,
    state: State,
    s: DbSession,
    patch: Annotated[
        dict[str, Any] | None,
        Body(description="Optional merge patch to check on top of the current config"),
    ] = None,
) -> ValidationResult:
    """Dry-run the agent's current config (or the config a PATCH with this body would produce)
    without saving anything."""
    agent = await _get_agent(s, agent_id)
    current = await agents_repo.current_version(s, agent)
    data = apply_merge_patch(patch_base(current.config, patch), patch) if patch \
        else current.config
    return await _dry_run(state, s, data)
