"""The fast decode path (orjson, whole batches at once) gives exactly what `json.loads` value by value gives.

orjson is stricter and lossier than the standard library in three places: it refuses NaN/Infinity (older
writers), refuses non-UTF-8 text, and reads an integer beyond 64 bits as a float. Each must fall back to the
exact decode, alone or inside a batch, and a stored value that is not one JSON array must not shift its
neighbours when a batch is parsed as one array.
"""

from __future__ import annotations

import json

import pytest

from featuremart.online.codec import RowDecoder

BIG = 123456789012345678901234567890  # beyond 64 bits: HUGEINT in DuckDB


def reference(dtypes: list[str], raw: bytes) -> list:
    """The standard library's decode, then the same conversions (the behaviour before orjson)."""
    return RowDecoder(dtypes).convert(json.loads(raw))


@pytest.mark.parametrize("raws", [
    [b"[1, %d, [1, %d], 2.5]" % (BIG, BIG), b"[2, 5, [1, 2], 3]"],  # big ints, and an int in a float column
    [b"[1, 5, [1, 2], NaN]", b"[2, 6, null, 1.5]"],  # NaN from an older writer, inside a batch
    [b"[1, 5, [3], 1.5]", b"[2, 6, [4], 2.5]", b"[3, -7, [], -0.0]"],  # the plain fast path
])
def test_batch_decode_matches_the_standard_library(raws):
    dtypes = ["int", "array<int>", "float"]
    decoder = RowDecoder(dtypes)
    expected = [reference(dtypes, raw) for raw in raws]
    got = decoder.decode_many(raws)
    assert got == expected
    assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in expected]
    assert [decoder.decode(raw) for raw in raws] == expected


def test_a_big_int_is_exact_not_a_float():
    decoder = RowDecoder(["int"])
    assert decoder.decode(b"[1, %d]" % BIG) == [1, BIG]
    assert decoder.decode_many([b"[1, %d]" % BIG, b"[2, 3]"]) == [[1, BIG], [2, 3]]


def test_values_that_are_not_one_array_do_not_shift_their_neighbours():
    decoder = RowDecoder(["float"])
    # Joined, these parse as two rows of width 1 ("[[1],[2],[3,[4]]]" would be three): each alone is invalid.
    with pytest.raises(ValueError):
        decoder.decode_many([b"[1],[2]", b"[3,[4]"])
    with pytest.raises(ValueError):
        decoder.decode_many([b"[1, 2.5]", b"[2, 3.5],[3, 4.5]"])


def test_only_the_rows_with_an_odd_float_are_converted_and_each_is_typed():
    """A view of floats and ints only: the batch converts just the rows where JSON spelled a float feature
    otherwise (an int as Postgres writes `3`, a null), wherever they sit in the batch; every float comes back
    a float, nulls stay null, ints stay ints."""
    dtypes = ["float", "int", "float"]
    raws = [b"[1, 1.5, 2, 3]", b"[2, 2.5, 3, 4.5]", b"[3, null, 4, 5.5]", b"[4, 7, 5, 6.5]", b"[5, 0.5, 6, 7.5]"]
    decoder = RowDecoder(dtypes)
    got = decoder.decode_many(raws)
    expected = [reference(dtypes, raw) for raw in raws]
    assert got == expected == [[1, 1.5, 2, 3.0], [2, 2.5, 3, 4.5], [3, None, 4, 5.5], [4, 7.0, 5, 6.5],
                               [5, 0.5, 6, 7.5]]
    assert [[type(v) for v in row] for row in got] == [[int, float, int, float], [int, float, int, float],
                                                       [int, type(None), int, float], [int, float, int, float],
                                                       [int, float, int, float]]


@pytest.mark.parametrize("raws", [
    # every row has a timestamp, a date and a float array: converted column by column
    [b'[1, 1732838400123456, "2024-02-29", [0.25, 1], 3]', b'[2, -1, "1970-01-01", [], 4.5]'],
    # nulls among them, and a float spelled as an int in the same rows
    [b'[1, null, "2024-02-29", null, 3]', b'[2, 0, null, [2, null], null]',
     b'[3, 253402300799999999, "9999-12-31", [1e300], 2]'],
])
def test_columns_of_timestamps_dates_and_float_arrays_match_row_by_row(raws):
    """Timestamps, dates and float arrays are converted column by column in a batch (no Python call per row):
    the same values and types as converting each row alone, nulls kept, whatever sits in the other columns."""
    dtypes = ["timestamp", "date", "array<float>", "float"]
    decoder = RowDecoder(dtypes)
    expected = [reference(dtypes, raw) for raw in raws]
    got = decoder.decode_many(raws)
    assert got == expected
    assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in expected]
    assert all(row[1].utcoffset().total_seconds() == 0 for row in got if row[1] is not None)


def test_batch_decode_converts_exactly_the_rows_with_odd_floats():
    """Float features JSON spelled as ints or nulls, in several rows and both float positions, among plain rows:
    those rows are converted (ints to floats, nulls kept), every other row is left as parsed."""
    dtypes = ["float", "int", "float"]
    raws = [b"[1, 2.5, 3, 4.5]", b"[2, 7, 3, null]", b"[3, 1.5, 3, 2.5]", b"[4, null, 3, 8]",
            b"[5, 1.25, 3, 0.5]", b"[6, 0, 3, 0]"] * 20
    got = RowDecoder(dtypes).decode_many(raws)
    expected = [reference(dtypes, raw) for raw in raws]
    assert got == expected
    assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in expected]
    assert got[5] == [6, 0.0, 3, 0.0] and type(got[5][1]) is float and type(got[1][1]) is float
