"""Decoding online values (docs/redis-format.md): a JSON array `[event_ts_us, feature_1, ..., feature_n]`.

Values are encoded by the warehouse (featuremart.sql); this module turns them back into typed Python values
using the logical types of the registry snapshot.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from featuremart import types

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def from_us(us: int) -> datetime:
    """An aware UTC datetime from microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=us)


def _identity(v: Any) -> Any:
    return v


def _float(v: Any) -> Any:
    return None if v is None else float(v)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    types.TIMESTAMP: lambda v: None if v is None else from_us(v),
    types.DATE: lambda v: None if v is None else date.fromisoformat(v),
    types.FLOAT: _float,
    types.ARRAY_FLOAT: lambda v: None if v is None else [None if x is None else float(x) for x in v],
}


def decoder(dtypes: Sequence[str]) -> Callable[[bytes], tuple[datetime, list[Any]]]:
    """A function decoding one stored value of a view whose features have these logical types."""
    fns = [_DECODERS.get(t, _identity) for t in dtypes]
    loads = json.loads

    def decode(raw: bytes) -> tuple[datetime, list[Any]]:
        row = loads(raw)
        return from_us(row[0]), [fn(v) for fn, v in zip(fns, row[1:])]

    return decode
