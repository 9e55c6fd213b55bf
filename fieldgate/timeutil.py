"""Wall-clock helpers: fieldgate carries time as integer epoch milliseconds everywhere."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time_ms(value: str | int | float) -> int:
    """Epoch milliseconds from an ISO 8601 string or an epoch-ms number.

    Raises ValueError with a reason for anything else.
    """
    if isinstance(value, bool):
        raise ValueError("time must be ISO 8601 text or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("time must not be negative")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as err:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from err
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    raise ValueError(f"time must be ISO 8601 text or epoch milliseconds, not {type(value).__name__}")
