"""config.example.yaml documents every setting with its default; bad config is one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from app.config import CONFIG_ENV, ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _keys(ann, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        if isinstance(v, dict) and v:  # an empty mapping is a setting's value ({})
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


@pytest.fixture
def restore_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings(path) exports PHONEBOOTH_CONFIG; undo that after the test.
    monkeypatch.setenv(CONFIG_ENV, "")
    monkeypatch.delenv(CONFIG_ENV)


def test_example_documents_every_key() -> None:
    documented = _flatten(yaml.safe_load(EXAMPLE.read_text()))
    assert documented == _keys(Settings)


def test_example_equals_defaults(restore_config_env: None) -> None:
    assert load_settings(EXAMPLE).model_dump() == Settings().model_dump()


def test_env_overrides_file(restore_config_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHONEBOOTH__SERVER__PORT", "9123")
    monkeypatch.setenv("PHONEBOOTH__DATABASE__URL", "postgresql+asyncpg://u@h/db")
    s = load_settings(EXAMPLE)
    assert s.server.port == 9123
    assert s.database.url == "postgresql+asyncpg://u@h/db"


def test_bad_value_is_one_line_naming_key(
    restore_config_env: None, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 70000\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(bad)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("config error: server.port:")


def test_unknown_key_rejected(restore_config_env: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("servr:\n  port: 80\n")
    with pytest.raises(ConfigError, match="servr"):
        load_settings(bad)


def test_missing_file(restore_config_env: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
