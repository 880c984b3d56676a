"""Decoding online values (docs/redis-format.md): a JSON array `[event_ts_us, feature_1, ..., feature_n]`.

Values are encoded by the warehouse (featuremart.sql); this module turns them back into typed Python values
using the logical types of the registry snapshot. Most types need nothing beyond `json.loads` (ints, bools,
strings, int and string arrays); a `RowDecoder` converts only the positions whose type needs it, in place, so
the common case costs one `json.loads` per stored value and no call per feature.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from featuremart import types

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def from_us(us: int) -> datetime:
    """An aware UTC datetime from microseconds since the epoch (exact: no float rounding)."""
    return EPOCH + timedelta(microseconds=us)


def finite(x: Any) -> float | None:
    """A stored float as served: NaN and ±Infinity become None. The sync never writes them (featuremart.sql), but
    a value written by an older version may hold `NaN` (which json.loads reads) or Postgres' string "NaN"."""
    if x is None:
        return None
    x = float(x)
    return None if x - x else x  # x - x is 0.0 for a finite x, NaN otherwise


def _float_array(v: list) -> list:
    return [finite(x) for x in v]


class RowDecoder:
    """Decodes the stored values of one feature view version into lists `[event_ts_us, value_1, ...]`.

    `decode(raw)` returns the JSON array with every feature converted to its logical type: floats are floats
    even when the warehouse wrote `3` (Postgres does), timestamps are aware UTC datetimes, dates are dates.
    The event time (element 0) stays in microseconds: the reader compares it with the ttl as an int and
    converts it only when it serves it.
    """

    __slots__ = ("floats", "converters")

    def __init__(self, dtypes: Sequence[str]):
        #: positions (in the stored array, so feature i is at i + 1) of floats, which JSON may spell as ints
        self.floats = tuple(i + 1 for i, t in enumerate(dtypes) if t == types.FLOAT)
        converters: dict[str, Callable[[Any], Any]] = {
            types.TIMESTAMP: from_us, types.DATE: date.fromisoformat, types.ARRAY_FLOAT: _float_array}
        #: (position, function) for the other types that JSON does not carry natively
        self.converters = tuple((i + 1, converters[t]) for i, t in enumerate(dtypes) if t in converters)

    def convert(self, row: list) -> list:
        """Convert the features of a JSON-decoded row in place; returns it."""
        for i in self.floats:
            value = row[i]
            if value.__class__ is int:
                row[i] = float(value)
            elif value.__class__ is not float or value - value:  # None, or NaN/±Infinity/"NaN" (see finite)
                row[i] = finite(value)
        for i, fn in self.converters:
            if row[i] is not None:
                row[i] = fn(row[i])
        return row

    def decode(self, raw: bytes) -> list:
        return self.convert(json.loads(raw))


def decoder(dtypes: Sequence[str]) -> Callable[[bytes], tuple[datetime, list[Any]]]:
    """A function decoding one stored value into (event time, [typed feature values])."""
    rows = RowDecoder(dtypes)

    def decode(raw: bytes) -> tuple[datetime, list[Any]]:
        row = rows.decode(raw)
        return from_us(row[0]), row[1:]

    return decode
