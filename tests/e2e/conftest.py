"""End-to-end tests: measurements for the terminal summary.

E2E tests report what they measured (latency, transcripts) rather than asserting speed. The
`e2e_report(title, lines)` fixture collects such lines; pytest prints them in an "end-to-end
measurements" section of its terminal summary, so they are visible without `-s` (in CI logs too).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

_REPORTS: list[tuple[str, str, list[str]]] = []


@pytest.fixture
def e2e_report(request: pytest.FixtureRequest) -> Callable[[str, list[str]], None]:
    def add(title: str, lines: list[str]) -> None:
        _REPORTS.append((request.node.nodeid, title, list(lines)))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    terminalreporter.section("end-to-end measurements")
    for nodeid, title, lines in _REPORTS:
        terminalreporter.write_line(f"{title} ({nodeid})")
        for line in lines:
            terminalreporter.write_line(f"    {line}")
