"""One timestamp format in every JSON answer: RFC 3339 in UTC with microseconds and ``Z``.

``2026-11-26T23:59:01.123456Z``: always UTC, always six fractional digits, so two
timestamps compare as strings and a client needs one parser. SQLite hands back naive
datetimes; every time tailsynth stores is UTC (``shared.models.utcnow``), so a naive one
is read as UTC rather than printed without an offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema

#: What every serialised timestamp matches (``docs/api.md``, "Timestamps").
RFC3339_UTC_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
EXAMPLE = "2026-11-26T23:59:01.123456Z"


def rfc3339(value: datetime) -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (a naive datetime is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: A datetime field of a response schema: parsed as any ISO 8601 datetime, written as
#: :func:`rfc3339`.
Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339_UTC_PATTERN,
            "description": "RFC 3339, UTC, microseconds, Z",
            "examples": [EXAMPLE],
        }
    ),
]
