"""Decoding online values (docs/redis-format.md): a JSON array `[event_ts_us, feature_1, ..., feature_n]`.

Values are encoded by the warehouse (featuremart.sql); this module turns them back into typed Python values
using the logical types of the registry snapshot. Most types need nothing beyond parsing the JSON (ints, bools,
strings, int and string arrays); a `RowDecoder` converts only the positions whose type needs it, in place, so
the common case costs one `orjson.loads` per stored value and no Python-level call per feature.

orjson (already the server's encoder) parses a stored value about 4x faster than `json.loads`, which was the
largest part of a 100-entity read (bench/README.md). It is strict where the standard library is lenient, so a
value it refuses or would change is parsed again by `json.loads`, which gives the exact answer: `NaN` and
`Infinity` from older writers, non-UTF-8 text, and integers beyond 64 bits (which orjson reads as floats).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from collections import deque
from itertools import chain, repeat
from operator import itemgetter, setitem
from typing import Any, Callable, Sequence

import orjson

from featuremart import types

_FLOATS_ONLY, _LISTS_ONLY = {float}, {list}

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def from_us(us: int) -> datetime:
    """An aware UTC datetime from microseconds since the epoch (exact: no float rounding). Positional
    `timedelta(0, 0, us)`: a third faster than the keyword, and called once per view and entity read."""
    return EPOCH + timedelta(0, 0, us)


def finite(x: Any) -> float | None:
    """A stored float as served: NaN and ±Infinity become None. The sync never writes them (featuremart.sql), but
    a value written by an older version may hold `NaN` (which json.loads reads) or Postgres' string "NaN"."""
    if x is None:
        return None
    x = float(x)
    return None if x - x else x  # x - x is 0.0 for a finite x, NaN otherwise


def _float_array(v: list) -> list:
    return [finite(x) for x in v]


def _from_us_column(column: list[int]) -> list[datetime]:
    """`from_us` of every value of a column with no None, with no Python frame per value (C-level map)."""
    return list(map(EPOCH.__add__, map(timedelta, repeat(0), repeat(0), column)))


def _column(fn: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda column: list(map(fn, column))


class RowDecoder:
    """Decodes the stored values of one feature view version into lists `[event_ts_us, value_1, ...]`.

    `decode(raw)` returns the JSON array with every feature converted to its logical type: floats are floats
    even when the warehouse wrote `3` (Postgres does), timestamps are aware UTC datetimes, dates are dates.
    The event time (element 0) stays in microseconds: the reader compares it with the ttl as an int and
    converts it only when it serves it.
    """

    __slots__ = ("width", "floats", "float_values", "ints", "int_values", "int_arrays", "converters")

    def __init__(self, dtypes: Sequence[str]):
        #: positions (in the stored array, so feature i is at i + 1) of floats, which JSON may spell as ints
        self.floats = tuple(i + 1 for i, t in enumerate(dtypes) if t == types.FLOAT)
        #: the float features of a row as a tuple, in one C call (the check that they need no conversion)
        self.float_values = tuple_getter(self.floats)
        #: positions of ints and int arrays: where orjson turns an integer beyond 64 bits into a float
        self.ints = tuple(i + 1 for i, t in enumerate(dtypes) if t == types.INT)
        self.int_values = tuple_getter(self.ints)
        self.width = len(dtypes) + 1
        self.int_arrays = tuple(i + 1 for i, t in enumerate(dtypes) if t == types.ARRAY_INT)
        converters: dict[str, tuple[Callable[[Any], Any], Callable[[list], list]]] = {
            types.TIMESTAMP: (from_us, _from_us_column), types.DATE: (date.fromisoformat, _column(date.fromisoformat)),
            types.ARRAY_FLOAT: (_float_array, _column(_float_array))}
        #: (position, function of a value, function of a column without None) for the other types that JSON
        #: does not carry natively
        self.converters = tuple((i + 1, *converters[t]) for i, t in enumerate(dtypes) if t in converters)

    def convert(self, row: list) -> list:
        """Convert the features of a JSON-decoded row in place; returns it."""
        self._convert_floats(row)
        for i, fn, _ in self.converters:
            if row[i] is not None:
                row[i] = fn(row[i])
        return row

    def _convert_floats(self, row: list) -> None:
        if self.floats and set(map(type, self.float_values(row))) != _FLOATS_ONLY:
            for i in self.floats:
                value = row[i]
                if value.__class__ is int:
                    row[i] = float(value)
                elif value.__class__ is not float or value - value:  # None, or NaN/±Infinity/"NaN" (see finite)
                    row[i] = finite(value)

    def decode(self, raw: bytes) -> list:
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:  # NaN/Infinity (older writers), not UTF-8: the lenient parser decides
            return self.convert(json.loads(raw))
        if (self.ints or self.int_arrays) and not self._exact(row):
            row = json.loads(raw)
        return self.convert(row)

    def decode_many(self, raws: list[bytes]) -> list[list]:
        """`decode` of many stored values: one orjson call parses them all (joined into one array), and the
        float and int checks of every row run in C. When anything needs a closer look (a float to convert, an
        integer beyond 64 bits, a value orjson refuses, a row of the wrong width), each value is decoded alone."""
        if len(raws) < 2:
            return [self.decode(raw) for raw in raws]
        try:
            rows = orjson.loads(b"[" + b",".join(raws) + b"]")
        except orjson.JSONDecodeError:
            return [self.decode(raw) for raw in raws]
        # Each stored value is one array of the view's width: anything else (a value that is not one JSON
        # array could shift its neighbours once joined) is decoded value by value, where it fails alone.
        if len(rows) != len(raws) or set(map(type, rows)) != _LISTS_ONLY or set(map(len, rows)) != {self.width}:
            return [self.decode(raw) for raw in raws]
        if self.ints and float in set(map(type, chain.from_iterable(map(self.int_values, rows)))):
            return [self.decode(raw) for raw in raws]
        if self.int_arrays:
            for row in rows:
                if not self._exact(row):
                    return [self.decode(raw) for raw in raws]
                self.convert(row)
            return rows
        if self.floats:
            # Only the rows holding a float feature JSON spelled otherwise (an int, null, NaN) are converted:
            # the types of all the rows' floats are listed in C, and the few odd ones found from that list.
            width = len(self.floats)
            kinds = list(map(type, chain.from_iterable(map(self.float_values, rows))))
            odd_kinds = set(kinds) - _FLOATS_ONLY
            if odd_kinds:
                for i in sorted({i // width for kind in odd_kinds for i in _positions(kinds, kind)}):
                    self._convert_floats(rows[i])
        # The other conversions column by column: a Python call per row was a third of a 100-entity read of a
        # view with a timestamp feature (bench/README.md); the values are set back into the rows by C-level map.
        for i, fn, many in self.converters:
            column = list(map(itemgetter(i), rows))
            values = [None if v is None else fn(v) for v in column] if None in column else many(column)
            deque(map(setitem, rows, repeat(i), values), maxlen=0)
        return rows

    def _exact(self, row: list) -> bool:
        """False if orjson read an integer beyond 64 bits (as a float) in an int or int array feature."""
        for i in self.ints:
            if row[i].__class__ is float:
                return False
        for i in self.int_arrays:
            if row[i] is not None and float in map(type, row[i]):
                return False
        return True


def _positions(items: list, item: Any) -> list[int]:
    """Where `item` is in `items`, found by `list.index` (a C-level scan): a view whose float features JSON
    sometimes spells as ints (a whole amount, a null) has a few such values among hundreds, and a Python loop
    over all of them was a sixth of a 100-entity decode (bench/README.md)."""
    found, i = [], -1
    try:
        while True:
            i = items.index(item, i + 1)
            found.append(i)
    except ValueError:
        return found


def json_bytes(value: Any) -> bytes:
    """`value` as JSON text, written by orjson (datetimes and dates as ISO 8601, NaN and infinities as null); an
    integer beyond 64 bits, which orjson refuses, makes the standard library write the whole value instead."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def tuple_getter(positions: tuple[int, ...]) -> Callable[[list], tuple]:
    """`itemgetter(*positions)`, returning a tuple even for one position (itemgetter returns the item)."""
    if not positions:
        return lambda row: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda row: (row[only],)
    return itemgetter(*positions)


def decoder(dtypes: Sequence[str]) -> Callable[[bytes], tuple[datetime, list[Any]]]:
    """A function decoding one stored value into (event time, [typed feature values])."""
    rows = RowDecoder(dtypes)

    def decode(raw: bytes) -> tuple[datetime, list[Any]]:
        row = rows.decode(raw)
        return from_us(row[0]), row[1:]

    return decode
