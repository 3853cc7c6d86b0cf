"""A call's key/value state as tools see it: the reserved keys, patch errors, the patch port.

The store itself (`app.calls.state_store.SessionStateStore`) lives with the call host, which
hands it to the tool executor at call setup; tools depend only on `StatePatcher`.
"""

from __future__ import annotations

from typing import Any, Protocol

# Keys starting with this are the server's own (e.g. the pending transfer target): REST and
# webhook patches can neither see nor change them.
RESERVED_PREFIX = "_"


class StateError(ValueError):
    """A patch that cannot be applied; `.field` names the offending key when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def public_view(state: dict[str, Any]) -> dict[str, Any]:
    """State without the server's reserved keys (what REST and webhooks see)."""
    return {k: v for k, v in state.items() if not k.startswith(RESERVED_PREFIX)}


class StatePatcher(Protocol):
    async def patch(self, session_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch to the session's state; raise StateError if it cannot be
        applied, LookupError if there is no such session."""
        ...
