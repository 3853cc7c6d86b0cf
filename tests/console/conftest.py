"""Console tests: what the browser run measured, printed in pytest's terminal summary."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_REPORTS: list[tuple[str, str, list[str]]] = []


@pytest.fixture
def console_report(request: pytest.FixtureRequest) -> Callable[[str, list[str]], None]:
    def add(title: str, lines: list[str]) -> None:
        _REPORTS.append((request.node.nodeid, title, list(lines)))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    terminalreporter.section("console browser tests")
    for nodeid, title, lines in _REPORTS:
        terminalreporter.write_line(f"{title} ({nodeid})")
        for line in lines:
            terminalreporter.write_line(f"    {line}")
