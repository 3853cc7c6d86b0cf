"""Headless Chromium for the console tests: the system's browser driven by Playwright.

Never downloads a browser: it uses Debian's `chromium` (`apt-get install chromium`) at
/usr/bin/chromium, or PHONEBOOTH_TEST_CHROMIUM. The accessibility audit uses axe-core from npm,
installed next to this file by `npm ci --prefix tests/console` (.ci/run does both).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
AXE_JS = HERE / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("PHONEBOOTH_TEST_ARTIFACTS",
                                HERE.parents[1] / "test-artifacts")) / "console"

# The rule sets axe runs: WCAG 2.0/2.1 A and AA, plus its best practices.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


def chromium_path() -> str | None:
    explicit = os.environ.get("PHONEBOOTH_TEST_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> list[str]:
    """What the browser tests need and this machine lacks (empty when they can run)."""
    out = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        out.append("the playwright package (pip install -e '.[dev]')")
    if chromium_path() is None:
        out.append("Chromium (apt-get install chromium chromium-driver)")
    if not AXE_JS.is_file():
        out.append("axe-core (npm ci --prefix tests/console)")
    return out


def launch_args(fake_audio: Path | None) -> list[str]:
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if fake_audio is not None:
        # %noloop: the question is asked once, then the fake microphone is silent.
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_audio}%noloop"]
    return args


async def axe_audit(page: Any) -> dict[str, Any]:
    """Run axe-core in the page. Evaluated over the DevTools protocol, so the page's strict
    CSP (no inline script) stays on."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE_JS.read_text() + "\n;undefined")
    result: dict[str, Any] = await page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})"
        ".then(r => ({violations: r.violations.map(v => ({id: v.id, impact: v.impact,"
        " help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})),"
        " passes: r.passes.length, incomplete: r.incomplete.length}))",
        AXE_TAGS,
    )
    return result
