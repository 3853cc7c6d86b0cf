"""Structured tool errors: what the LLM is told when a tool could not do its job.

The LLM gets `{"error": {"type": ..., "message": ...}}` instead of an exception, so it can
apologise, ask again or try something else; the call never dies because a tool failed.
"""

from __future__ import annotations

from typing import Any, Literal

# `status` as recorded in tool_calls: error | timeout (cancelled is handled by the executor).
ErrorKind = Literal[
    "invalid_arguments", "unknown_tool", "timeout", "http_error", "unreachable",
    "bad_response", "not_available", "invalid_input", "not_confirmed", "failed", "internal",
    "no_answer",
]


class ToolExecutionError(Exception):
    def __init__(self, kind: ErrorKind, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details

    @property
    def status(self) -> str:
        """The tool_calls.status this error is recorded with."""
        return "timeout" if self.kind == "timeout" else "error"

    def to_result(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message, **self.details}}
