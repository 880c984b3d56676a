"""Feature value types: the small set featuremart serves, and how warehouse column types map onto it.

The logical type decides how a value is encoded in the online store (docs/redis-format.md) and decoded for
readers, whatever warehouse computed it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

STRING, INT, FLOAT, BOOL, TIMESTAMP, DATE = "string", "int", "float", "bool", "timestamp", "date"
ARRAY_FLOAT, ARRAY_INT, ARRAY_STRING = "array<float>", "array<int>", "array<string>"
LOGICAL_TYPES = (STRING, INT, FLOAT, BOOL, TIMESTAMP, DATE, ARRAY_FLOAT, ARRAY_INT, ARRAY_STRING)

_SCALARS = [
    (re.compile(r"^(var)?char|^text$|^string$|^character( varying)?|^uuid$|^nvarchar|^bpchar"), STRING),
    (re.compile(r"^(tiny|small|big|hug|u?tiny|u?small|u?big|u)?int(eger)?\d*$|^int[248]$|^long$|^ubigint$"
                r"|^utinyint$|^usmallint$|^uinteger$|^uhugeint$|^hugeint$"), INT),
    (re.compile(r"^(double|float\d*|real|double precision|decimal|numeric)"), FLOAT),
    (re.compile(r"^bool(ean)?$"), BOOL),
    (re.compile(r"^timestamp|^datetime"), TIMESTAMP),
    (re.compile(r"^date$"), DATE),
]
# Postgres reports array columns as their element's udt name with a leading underscore (e.g. _float8).
_PG_ARRAYS = {"_float8": ARRAY_FLOAT, "_float4": ARRAY_FLOAT, "_numeric": ARRAY_FLOAT, "_int8": ARRAY_INT,
              "_int4": ARRAY_INT, "_int2": ARRAY_INT, "_text": ARRAY_STRING, "_varchar": ARRAY_STRING}


def logical_type(warehouse_type: str) -> str | None:
    """The logical type of a warehouse column type (DuckDB, Postgres or Spark spelling), or None if unsupported.

    >>> logical_type("DOUBLE[]"), logical_type("timestamp with time zone"), logical_type("DECIMAL(18,2)")
    ('array<float>', 'timestamp', 'float')
    """
    raw = warehouse_type.strip().lower()
    if raw in _PG_ARRAYS:
        return _PG_ARRAYS[raw]
    element = raw[:-2] if raw.endswith("[]") else raw[6:-1] if raw.startswith("array<") and raw.endswith(">") else None
    if element is not None:  # DuckDB/Postgres `double[]`, Spark `array<double>`
        inner = logical_type(element)
        return {FLOAT: ARRAY_FLOAT, INT: ARRAY_INT, STRING: ARRAY_STRING}.get(inner or "")
    for pattern, name in _SCALARS:
        if pattern.search(raw):
            return name
    return None


def to_us(moment: datetime) -> int:
    """A datetime as microseconds since the epoch; a naive datetime is read as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
