"""Field types that several scenario sections share: topic-safe node names and UTC times."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import BeforeValidator, Field

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NodeName = Annotated[str, Field(pattern=NODE_ID_RE.pattern)]


def _utc_time(value: object) -> object:
    # pydantic reads 1000000000 (and "1000000000") as seconds since 1970; a scenario never means
    # that, so only a YAML timestamp, a date or an ISO-8601 string is a time.
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an ISO-8601 UTC time such as 2026-01-01T00:00:00Z, got "
                     f"{value!r}; a number is not read as seconds since 1970")


UtcTime = Annotated[datetime, BeforeValidator(_utc_time)]
