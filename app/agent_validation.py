"""Checking agent configs: what create/patch enforce, and the deeper dry run of `validate`.

`check_config` is the save-time check (schema + each provider's option model) and returns
problems with dotted field paths ("llm.provider", "response_timeout_s"). `dry_run` also checks
what a call would need at run time: referenced credentials exist, env-var secrets are set and
model files are on disk. A provider whose module cannot be imported is reported as a problem,
never raised, so one broken adapter cannot take the API down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.agent_config import (
    PROVIDER_KINDS,
    STT_RECOVERY_TOP_LEVEL,
    TOO_DEEP,
    AgentConfig,
    ProviderBlock,
    ProviderChoice,
    S2SBlock,
    STTBlock,
    all_provider_blocks,
    parse_agent_config,
    provider_blocks,
    recovery_misplaced,
    s2s_cascade_errors,
    too_deep,
    validate_json_strict,
)
from providers import registry
from providers.base import Provider, ProviderConfig, SecretRef

KINDS = PROVIDER_KINDS


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


def _blocks(config: AgentConfig) -> Iterator[tuple[str, str, ProviderChoice, int]]:
    """(kind, dotted location, block, fallback depth) for every provider block: each primary
    and fallback, then the s2s block."""
    for kind, loc, block, depth in all_provider_blocks(config):
        yield kind, field_path(loc), block, depth
    if config.s2s is not None:
        yield "s2s", "s2s", config.s2s, 0


def _load(
    kind: str, block: ProviderChoice, loc: str
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


def _options(cls: type[Provider], block: ProviderChoice,
             skip: list[str]) -> ProviderConfig:
    """The adapter's config from the block's options (less `skip`, reported already), with
    JSON's types (like the schema)."""
    options = {k: v for k, v in block.options().items() if k not in skip}
    return cls.Config.model_validate_json(json.dumps(options), strict=True)


def _block_problems(kind: str, loc: str, block: ProviderChoice, depth: int = 0,
                    ) -> tuple[ProviderConfig | None, type[Provider] | None, list[Problem]]:
    """(config, adapter, problems) of one block: depth, provider name and options."""
    deep = isinstance(block, ProviderBlock) and too_deep(block, depth)
    problems = [Problem(f"{loc}.fallback", TOO_DEEP)] if deep else []
    misplaced = recovery_misplaced(kind, block, depth)
    problems += [Problem(f"{loc}.{k}", STT_RECOVERY_TOP_LEVEL) for k in misplaced]
    cls, problem = _load(kind, block, loc)
    if problem is not None:
        return None, None, [*problems, problem]
    assert cls is not None
    try:
        return _options(cls, block, misplaced), cls, problems
    except ValidationError as exc:
        return None, cls, problems + [
            Problem(f"{loc}.{p.field}", p.message) for p in problems_from_error(exc)]


def _chain_problems(kind: str, block: ProviderBlock) -> list[Problem]:
    return [p for loc, b, depth in provider_blocks(kind, block)
            for p in _block_problems(kind, field_path(loc), b, depth)[2]]


def _cascade_problems(config: AgentConfig) -> list[Problem]:
    """The s2s block's rules about stt/llm/tts (all or nothing; output text needs tts)."""
    cascade = s2s_cascade_errors(config)
    if not cascade:
        return []
    return problems_from_error(ValidationError.from_exception_data("AgentConfig", cascade))


def _provider_problems(config: AgentConfig) -> list[Problem]:
    return [p for kind, loc, b, depth in _blocks(config)
            for p in _block_problems(kind, loc, b, depth)[2]] + _cascade_problems(config)


def _raw_provider_problems(data: Any) -> list[Problem]:
    """Provider checks on a config whose schema check failed elsewhere, so one round trip
    reports every problem. Blocks that are themselves malformed were reported already."""
    if not isinstance(data, dict):
        return []
    problems: list[Problem] = []
    for kind in KINDS:
        if kind not in data:
            continue
        model = STTBlock if kind == "stt" else ProviderBlock
        try:
            block = model.model_validate_json(json.dumps(data[kind]), strict=True)
        except (ValidationError, TypeError, ValueError):
            continue
        problems += _chain_problems(kind, block)
    if isinstance(data.get("s2s"), dict):
        try:
            s2s = S2SBlock.model_validate_json(json.dumps(data["s2s"]), strict=True)
        except (ValidationError, TypeError, ValueError):
            return problems
        problems += _block_problems("s2s", "s2s", s2s)[2]
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
            config = validate_json_strict(data)
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
        config = validate_json_strict(data)
    except ValidationError as exc:
        return _merge(problems_from_error(exc), _raw_provider_problems(data))
    problems: list[Problem] = _cascade_problems(config)
    wanted: dict[str, list[str]] = {}  # credential name -> fields referencing it
    for kind, loc, block, depth in _blocks(config):
        pcfg, cls, block_problems = _block_problems(kind, loc, block, depth)
        problems += block_problems
        if pcfg is None or cls is None:
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
