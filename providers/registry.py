"""Provider registry: built-in adapters plus third-party plugins.

Built-ins are named here with their module paths and imported lazily, so an agent that uses only
cloud providers never imports llama.cpp. Plugins register through the `phonebooth.providers`
entry-point group; each entry point names a Provider subclass, e.g. in a plugin's pyproject:

    [project.entry-points."phonebooth.providers"]
    mytts = "my_pkg.tts:MyTTS"
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from providers.base import Kind, Provider, ProviderConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "phonebooth.providers"

# (kind, name) -> "module:Class"
BUILTINS: dict[tuple[str, str], str] = {
    ("stt", "deepgram"): "providers.stt.deepgram:DeepgramSTT",
    ("stt", "openai"): "providers.stt.openai:OpenAISTT",
    ("stt", "whisper"): "providers.stt.whisper:WhisperSTT",
    ("llm", "llama_cpp"): "providers.llm.llama_cpp:LlamaCppLLM",
    ("llm", "openai"): "providers.llm.openai:OpenAILLM",
    ("llm", "anthropic"): "providers.llm.anthropic:AnthropicLLM",
    ("tts", "piper"): "providers.tts.piper:PiperTTS",
    ("tts", "elevenlabs"): "providers.tts.elevenlabs:ElevenLabsTTS",
    ("tts", "cartesia"): "providers.tts.cartesia:CartesiaTTS",
    ("tts", "openai"): "providers.tts.openai:OpenAITTS",
    ("tts", "deepgram"): "providers.tts.deepgram:DeepgramTTS",
    ("s2s", "openai_realtime"): "providers.s2s.openai_realtime:OpenAIRealtime",
    ("s2s", "azure_openai"): "providers.s2s.openai_realtime:AzureOpenAIRealtime",
    ("s2s", "gemini_live"): "providers.s2s.gemini_live:GeminiLive",
}

_extra: dict[tuple[str, str], type[Provider]] = {}
_plugins_loaded = False


class UnknownProvider(KeyError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"unknown {kind} provider '{name}'; known: {', '.join(names(kind))}")
        self.kind = kind
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[Provider]) -> type[Provider]:
    """Register a provider class at run time (tests, embedding applications)."""
    _extra[(cls.kind, cls.name)] = cls
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the server down
            log.error("provider plugin %s failed to load: %s", ep.name, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            log.error("provider plugin %s is not a Provider subclass", ep.name)
            continue
        _extra.setdefault((cls.kind, cls.name), cls)


def names(kind: str) -> list[str]:
    _load_plugins()
    found = {n for (k, n) in BUILTINS if k == kind} | {n for (k, n) in _extra if k == kind}
    return sorted(found)


def get(kind: Kind | str, name: str) -> type[Provider]:
    _load_plugins()
    if (kind, name) in _extra:
        return _extra[(kind, name)]
    target = BUILTINS.get((kind, name))
    if target is None:
        raise UnknownProvider(kind, name)
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    _extra[(kind, name)] = cls
    return cls


def parse_config(kind: Kind | str, name: str, options: dict[str, Any]) -> ProviderConfig:
    """Validate a provider block's options (everything but `provider` and `fallback`).

    Raises UnknownProvider or pydantic.ValidationError.
    """
    cls = get(kind, name)
    return cls.Config.model_validate(options)


__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "UnknownProvider", "ValidationError", "get",
           "names", "parse_config", "register"]
