"""`from`/`to` query parameters: ISO 8601 dates or date-times, naive values read as UTC.

Only the ISO form is accepted (pydantic alone would also take a bare number as a Unix time), so
the published pattern is the whole truth.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BeforeValidator, WithJsonSchema

# A date, or a date and time (seconds, fraction and offset optional).
ISO_DATETIME = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
                r"(Z|[+-][0-9]{2}:?[0-9]{2})?)?$")
_ISO = re.compile(ISO_DATETIME)


def _iso_only(value: Any) -> Any:
    if isinstance(value, str) and not _ISO.fullmatch(value):
        raise ValueError("expected an ISO 8601 date or date-time such as 2026-01-31 or "
                         "2026-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[
    datetime,
    BeforeValidator(_iso_only),
    WithJsonSchema({"type": "string", "pattern": ISO_DATETIME}),
]

From = Annotated[
    IsoDateTime | None,
    Query(alias="from", description="Inclusive start, ISO 8601 (UTC when no offset)"),
]
To = Annotated[
    IsoDateTime | None,
    Query(alias="to", description="Exclusive end, ISO 8601 (UTC when no offset)"),
]


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
