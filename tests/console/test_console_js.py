"""The console's pure JavaScript helpers under Node (no browser): the merge patch an agent edit
is saved with, and the line diff of versions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
DIFF_JS = Path(__file__).resolve().parents[2] / "app" / "console" / "static" / "js" / "diff.js"

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js (apt-get install nodejs)")


def run_js(body: str) -> object:
    script = f"import * as m from {json.dumps(DIFF_JS.as_uri())};\n{body}"
    out = subprocess.run([NODE or "node", "--input-type=module", "-e", script],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_merge_patch_turns_one_config_into_another() -> None:
    before = {"name": "a", "llm": {"provider": "openai", "model": "x", "temperature": 0.2},
              "tools": [{"name": "t"}], "voice": "v1", "metadata": {}}
    after = {"name": "a", "llm": {"provider": "openai", "model": "y"},
             "tools": [], "metadata": {"k": 1}, "greeting": "hi"}
    patch = run_js(f"console.log(JSON.stringify(m.mergePatch({json.dumps(before)}, "
                   f"{json.dumps(after)})))")
    assert patch == {"voice": None, "llm": {"model": "y", "temperature": None}, "tools": [],
                     "metadata": {"k": 1}, "greeting": "hi"}


def test_merge_patch_of_equal_configs_is_empty() -> None:
    cfg = {"name": "a", "vad": {"threshold": 0.5}, "tools": [{"name": "t"}]}
    assert run_js(f"console.log(JSON.stringify(m.mergePatch({json.dumps(cfg)}, "
                  f"{json.dumps(cfg)})))") == {}


def test_line_diff_marks_added_and_removed_lines() -> None:
    lines = run_js('console.log(JSON.stringify(m.diffLines("a\\nb\\nc", "a\\nc\\nd")))')
    assert lines == [["same", "a"], ["del", "b"], ["same", "c"], ["add", "d"]]
