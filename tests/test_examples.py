"""The example agent files stay valid (and the demo file stays the demo agent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.agent_config import parse_agent_config
from app.demo_agent import demo_agent_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "agents"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_agent_is_valid(path: Path) -> None:
    parse_agent_config(yaml.safe_load(path.read_text()))


def test_demo_example_is_the_demo_agent() -> None:
    assert yaml.safe_load((EXAMPLES / "demo.yaml").read_text()) == demo_agent_config()


def test_cloud_example_has_a_fallback_for_every_provider() -> None:
    config = parse_agent_config(yaml.safe_load((EXAMPLES / "cloud.yaml").read_text()))
    assert [(b.provider, [f.provider for f in b.fallback])
            for b in (config.stt, config.llm, config.tts)] == [
        ("deepgram", ["openai"]), ("openai", ["anthropic"]), ("elevenlabs", ["cartesia"])]
