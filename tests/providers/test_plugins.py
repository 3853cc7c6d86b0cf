"""Third-party providers plug in through the `phonebooth.providers` entry-point group.

A plugin is an ordinary installed distribution. The example below is a complete one: a TTS that
answers every sentence with a beep. Its package module:

    # phonebooth_example_plugin/__init__.py
    from typing import ClassVar
    import numpy as np
    from pydantic import Field
    from providers.base import AudioChunk, ProviderConfig, TTSProvider

    class BeepConfig(ProviderConfig):          # validated when an agent is saved
        frequency_hz: float = Field(440.0, gt=20, lt=8000)
        duration_ms: int = Field(200, gt=0, le=5000)

    class BeepTTS(TTSProvider):
        name: ClassVar[str] = "example_beep"    # the `provider:` value in an agent config
        Config = BeepConfig
        sample_rate = 16000

        async def synthesize(self, text, voice=None):
            ...yield AudioChunk(...)

and its packaging metadata:

    [project.entry-points."phonebooth.providers"]
    example_beep = "phonebooth_example_plugin:BeepTTS"

After `pip install`, agents can say `tts: {provider: example_beep, frequency_hz: 880}`. The test
builds exactly that distribution in a temporary directory (a package plus a `.dist-info` with
`entry_points.txt`, which is what pip would install) and puts it on sys.path.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from providers import registry
from providers.factory import build_provider

PLUGIN_MODULE = '''
from typing import ClassVar

import numpy as np
from pydantic import Field

from providers.base import AudioChunk, ProviderConfig, TTSProvider


class BeepConfig(ProviderConfig):
    frequency_hz: float = Field(440.0, gt=20, lt=8000)
    duration_ms: int = Field(200, gt=0, le=5000)


class BeepTTS(TTSProvider):
    name: ClassVar[str] = "example_beep"
    Config = BeepConfig
    sample_rate = 16000

    async def synthesize(self, text, voice=None):
        n = self.sample_rate * self.config.duration_ms // 1000
        t = np.arange(n) / self.sample_rate
        tone = np.sin(2 * np.pi * self.config.frequency_hz * t) * 8000
        yield AudioChunk(tone.astype(np.int16), self.sample_rate)


class NotAProvider:
    pass
'''

ENTRY_POINTS = """
[phonebooth.providers]
example_beep = phonebooth_example_plugin:BeepTTS
example_missing = phonebooth_example_plugin:DoesNotExist
example_wrong_type = phonebooth_example_plugin:NotAProvider
"""


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pkg = tmp_path / "phonebooth_example_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "phonebooth_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(textwrap.dedent("""\
        Metadata-Version: 2.1
        Name: phonebooth-example-plugin
        Version: 0.1.0
        """))
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    # A fresh registry view: plugins are discovered once per process, so rediscover here.
    monkeypatch.setattr(registry, "_extra", {})
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    sys.modules.pop("phonebooth_example_plugin", None)


def test_registry_finds_the_plugin(example_plugin, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="providers.registry"):
        cls = registry.get("tts", "example_beep")
    assert cls.__name__ == "BeepTTS" and cls.kind == "tts"
    assert "example_beep" in registry.names("tts")
    assert "piper" in registry.names("tts")  # built-ins are still there
    # Broken entries are reported and skipped; they do not take the registry down.
    assert "example_missing" in caplog.text and "example_wrong_type" in caplog.text
    assert "example_missing" not in registry.names("tts")


def test_plugin_options_are_validated_like_builtins(example_plugin) -> None:
    cfg = registry.parse_config("tts", "example_beep", {"frequency_hz": 880})
    assert cfg.frequency_hz == 880  # type: ignore[attr-defined]
    with pytest.raises(registry.ValidationError):
        registry.parse_config("tts", "example_beep", {"frequency_hz": 5})
    with pytest.raises(registry.ValidationError):
        registry.parse_config("tts", "example_beep", {"volume": 3})  # unknown option


def test_agent_config_uses_the_plugin(example_plugin) -> None:
    from app.agent_config import parse_agent_config

    agent = parse_agent_config({"name": "beeper", "prompt": "beep",
                                "tts": {"provider": "example_beep", "frequency_hz": 880}})
    assert agent.tts.provider == "example_beep"
    with pytest.raises(registry.ValidationError) as info:
        parse_agent_config({"name": "beeper", "prompt": "beep",
                            "tts": {"provider": "example_beep", "frequency_hz": 1}})
    assert info.value.errors()[0]["loc"] == ("tts", "frequency_hz")


async def test_plugin_runs_through_the_factory(example_plugin, ctx) -> None:
    tts = build_provider("tts", {"provider": "example_beep", "duration_ms": 100}, ctx)
    chunks = [c async for c in tts.synthesize("anything")]
    assert len(chunks) == 1 and chunks[0].sample_rate == 16000
    assert len(chunks[0].samples) == 1600 and np.abs(chunks[0].samples).max() > 7000
