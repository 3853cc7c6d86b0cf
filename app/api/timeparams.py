"""`from`/`to` query parameters: ISO 8601, naive values read as UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query

From = Annotated[
    datetime | None,
    Query(alias="from", description="Inclusive start, ISO 8601 (UTC when no offset)"),
]
To = Annotated[
    datetime | None, Query(alias="to", description="Exclusive end, ISO 8601 (UTC when no offset)")
]


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
