"""What every `phonebooth` subcommand shares: the parser types, the error it reports, settings.

Command modules (`app.doctor`, `app.simulator.command`, ...) import this, never `app.cli`,
which imports them to build its parser: the dependency runs one way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from app.config import Settings, load_settings

SubParsers = Any  # argparse._SubParsersAction (private type)
Registrar = Callable[[SubParsers, argparse.ArgumentParser], None]


class CommandError(Exception):
    """A failure to report as `error: ...` with exit status 1."""


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from --config (or $PHONEBOOTH_CONFIG) and the environment."""
    return load_settings(getattr(args, "config", None))
