"""Checking agent configs: what create/patch enforce, and the deeper dry run of `validate`.

`check_config` is the save-time check (schema + each provider's option model) and returns
problems with dotted field paths ("llm.provider", "response_timeout_s"). `dry_run` also checks
what a call would need at run time: referenced credentials exist, env-var secrets are set and
model files are on disk. A provider whose module cannot be imported is reported as a problem,
never raised, so one broken adapter cannot take the API down.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.agent_config import AgentConfig, ProviderBlock, parse_agent_config
from providers import registry
from providers.base import Provider, ProviderConfig, SecretRef

KINDS = ("stt", "llm", "tts")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


def field_path(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def problems_from_error(exc: ValidationError, *, strip: tuple[str, ...] = ()) -> list[Problem]:
    out = []
    for e in exc.errors():
        loc = list(e["loc"])
        while loc and loc[0] in strip:
            loc.pop(0)
        out.append(Problem(field_path(loc), e["msg"]))
    return out


def _blocks(config: AgentConfig) -> Iterable[tuple[str, str, ProviderBlock]]:
    """(kind, dotted location, block) for every primary and fallback provider block."""
    for kind in KINDS:
        block: ProviderBlock = getattr(config, kind)
        for i, b in enumerate(block.chain()):
            yield kind, (kind if i == 0 else f"{kind}.fallback.{i - 1}"), b


def _load(
    kind: str, block: ProviderBlock, loc: str
) -> tuple[type[Provider] | None, Problem | None]:
    try:
        return registry.get(kind, block.provider), None
    except registry.UnknownProvider as exc:
        return None, Problem(f"{loc}.provider", str(exc))
    except Exception as exc:  # ImportError or a plugin failing at import time
        return None, Problem(
            f"{loc}.provider",
            f"{kind} provider '{block.provider}' is not available in this installation "
            f"({type(exc).__name__}: {exc})",
        )


def _chain_problems(kind: str, block: ProviderBlock) -> list[Problem]:
    problems: list[Problem] = []
    for i, b in enumerate(block.chain()):
        loc = kind if i == 0 else f"{kind}.fallback.{i - 1}"
        cls, problem = _load(kind, b, loc)
        if problem is not None:
            problems.append(problem)
            continue
        assert cls is not None
        try:
            cls.Config.model_validate(b.options())
        except ValidationError as exc:
            problems += [Problem(f"{loc}.{p.field}", p.message) for p in problems_from_error(exc)]
    return problems


def _provider_problems(config: AgentConfig) -> list[Problem]:
    return [p for kind in KINDS for p in _chain_problems(kind, getattr(config, kind))]


def _raw_provider_problems(data: Any) -> list[Problem]:
    """Provider checks on a config whose schema check failed elsewhere, so one round trip
    reports every problem. Blocks that are themselves malformed were reported already."""
    if not isinstance(data, dict):
        return []
    problems: list[Problem] = []
    for kind in KINDS:
        if kind not in data:
            continue
        try:
            block = ProviderBlock.model_validate(data[kind])
        except ValidationError:
            continue
        problems += _chain_problems(kind, block)
    return problems


def _merge(a: list[Problem], b: list[Problem]) -> list[Problem]:
    seen = {p.field for p in a}
    return a + [p for p in b if p.field not in seen]


def check_config(data: Any) -> tuple[AgentConfig | None, list[Problem]]:
    """Save-time validation: (config, []) when valid, else (None, problems)."""
    try:
        return parse_agent_config(data), []
    except ValidationError as exc:
        return None, _merge(problems_from_error(exc), _raw_provider_problems(data))
    except Exception:
        # parse_agent_config lets import failures of provider modules escape; redo the
        # provider part block by block so each failure is pinned to its field.
        try:
            config = AgentConfig.model_validate(data)
        except ValidationError as exc:
            return None, _merge(problems_from_error(exc), _raw_provider_problems(data))
        problems = _provider_problems(config)
        return (config, []) if not problems else (None, problems)


def _secret_fields(pcfg: ProviderConfig, refs: list[SecretRef]) -> list[tuple[str, SecretRef]]:
    out = []
    for ref in refs:
        name = next((k for k, v in pcfg.__dict__.items() if v is ref), None)
        out.append((name or "credentials", ref))
    return out


def _missing_model_files(files: list[str], models_dir: Path, loc: str) -> list[Problem]:
    out = []
    for f in files:
        path = Path(f).expanduser()
        if not path.is_absolute():
            path = models_dir / path
        if not path.is_file():
            out.append(
                Problem(
                    f"{loc}.provider",
                    f"model file {path} is missing (run `phonebooth models fetch`)",
                )
            )
    return out


CredentialLookup = Callable[[set[str]], Awaitable[set[str]]]


async def dry_run(
    data: Any, *, existing_credentials: CredentialLookup, models_dir: Path
) -> list[Problem]:
    """Everything `check_config` checks, plus run-time prerequisites. Never raises for a bad
    config; returns the list of problems (empty = a call could start with this config)."""
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        return _merge(problems_from_error(exc), _raw_provider_problems(data))
    problems: list[Problem] = []
    wanted: dict[str, list[str]] = {}  # credential name -> fields referencing it
    for kind, loc, block in _blocks(config):
        cls, problem = _load(kind, block, loc)
        if problem is not None:
            problems.append(problem)
            continue
        assert cls is not None
        try:
            pcfg = cls.Config.model_validate(block.options())
        except ValidationError as exc:
            problems += [Problem(f"{loc}.{p.field}", p.message) for p in problems_from_error(exc)]
            continue
        try:
            refs = cls.secret_refs(pcfg)
            files = cls.model_files(pcfg)
        except Exception as exc:
            problems.append(Problem(f"{loc}.provider", f"provider check failed: {exc}"))
            continue
        for fname, ref in _secret_fields(pcfg, refs):
            if ref.credential:
                wanted.setdefault(ref.credential, []).append(f"{loc}.{fname}")
            elif ref.env and not os.environ.get(ref.env):
                problems.append(
                    Problem(f"{loc}.{fname}", f"environment variable {ref.env} is not set")
                )
            elif not ref.env:
                problems.append(Problem(f"{loc}.{fname}", "needs 'credential' or 'env'"))
        problems += _missing_model_files(files, models_dir, loc)
    if wanted:
        found = await existing_credentials(set(wanted))
        for name in sorted(set(wanted) - found):
            for fld in wanted[name]:
                problems.append(Problem(fld, f"credential '{name}' does not exist"))
    return problems
