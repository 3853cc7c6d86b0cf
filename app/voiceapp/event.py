"""`Event`: one message from Phonebooth, as a read-only mapping with attribute access."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any


class Event(Mapping[str, Any]):
    """A message Phonebooth sent: `event["id"]`, `event.get("name")`, `event.arguments`.

    `event.type` is the handler key: the `type` of Phonebooth's events (`tool.called`), or the
    `event` of audio mode's Plivo stream messages (`media`, `start`, `stop`). A key that is also
    a mapping method (`keys`, `items`, `values`, `get`) is read with `event["..."]`.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    @property
    def type(self) -> str:
        value = self._data.get("type")
        if not isinstance(value, str) or not value:
            value = self._data.get("event")
        return value if isinstance(value, str) else ""

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"event {self.type!r} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Event is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Event is read-only")

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the message, to change or keep."""
        return copy.deepcopy(self._data)

    def __repr__(self) -> str:
        return f"Event({self._data!r})"
