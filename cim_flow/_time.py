"""Time values in and out: everything is int64 microseconds since the epoch, UTC."""
from __future__ import annotations

import datetime as _dt

import numpy as np
import pyarrow as pa

UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_TO_US = {"s": (1_000_000, 1), "ms": (1000, 1), "us": (1, 1), "ns": (1, 1000)}  # (multiply, divide)


def to_micros(value) -> int:
    """µs since the epoch from a datetime (naive = UTC), date, RFC 3339 text,
    numpy datetime64, pandas Timestamp or a pyarrow timestamp/date scalar (a value
    read back from a table, such as a summary's ``created_at``).  Plain ints are
    taken as µs, the unit of ``occurred_at`` (JSON queries take epoch milliseconds:
    see :func:`cim_flow._queries._time_arg`)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            raise ValueError("a time is required, got a null")
        if pa.types.is_timestamp(value.type):  # the stored count in its unit (as_py drops ns)
            mul, div = _UNIT_TO_US[value.type.unit]
            return value.value * mul // div
        value = value.as_py()
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"bad time {value!r}: expected RFC 3339 text") from None
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, _dt.date):
        return to_micros(_dt.datetime(value.year, value.month, value.day, tzinfo=UTC))
    raise ValueError(f"cannot read a time from {type(value).__name__}")


def from_micros(us: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(microseconds=int(us))
