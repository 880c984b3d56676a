"""Online reads: features of a service or a feature list, for a batch of entities, in one round trip.

Each value comes with its event timestamp and a status: present, missing (no key: never synced, the entity
left, or its value outlived the ttl and Redis removed the key, which expires at event time + ttl) or expired (the
key is still there but older than the view's ttl: the instant between the ttl passing and Redis removing it, or a
read with an explicit `now`; never served as present; the ttl is inclusive). The registry id is read
in the same MGET as the values, so a reader notices a new sync's registry at once and never mixes two versions
of a view.

The read path is built for low overhead (measured against a hand-written redis-py reader of the same keys in
bench/online_read.py; figures and where the time goes in bench/README.md). What a request needs that does not
depend on its entities (views, key formats, positions, decoders) is resolved once per (registry, request shape)
into a `_Plan` and cached; a read then builds the keys, sends one MGET, and decodes each view's values with one
`orjson.loads` (codec) plus conversions only for the types JSON does not carry. The result (`OnlineResult`) is
shaped on demand: records of `FeatureValue`s, a dict of columns, or an Arrow table (which builds no per-value
Python objects).

Example:
    >>> reader = OnlineReader(store)                                              # doctest: +SKIP
    >>> result = reader.read([{"customer_id": "C1", "merchant_id": "M1"}], service="fraud_model")  # doctest: +SKIP
    >>> result.to_records()[0]["spend_7d"]                                        # doctest: +SKIP
    FeatureValue(value=452.5, event_ts=datetime(..., tzinfo=timezone.utc), status='present')
    >>> result.to_arrow().column_names[:4]                                        # doctest: +SKIP
    ['customer_id', 'merchant_id', 'spend_1d', 'spend_1d__status']
"""

from __future__ import annotations

import array
import functools
import gc
import io
import operator
import os
import re
import struct
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from itertools import accumulate, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import orjson

from featuremart import types
from featuremart.errors import ConfigError, FeaturemartError, NotPublishedError, UnknownNameError
from featuremart.online import keys
from featuremart.online.codec import EPOCH, RowDecoder, from_us, json_bytes
from featuremart.online.store import OnlineStore
from featuremart.registry import Feature, Registry, output_names

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"
#: Where a reader that needs only Redis finds its settings (featuremart get/serve, the server's app factory).
URL_ENV, PREFIX_ENV, DEFAULT_PREFIX = "FEATUREMART_REDIS_URL", "FEATUREMART_PREFIX", "fm"
STATUSES = (PRESENT, MISSING, EXPIRED)
#: Suffixes of the per-feature status and event time columns of `OnlineResult.to_columns` / `to_arrow`.
STATUS_SUFFIX, EVENT_TS_SUFFIX = "__status", "__event_ts"
#: Request shapes (service or feature list) whose plans are kept per registry, and the memory they may hold
#: (estimated, see `_plan_cost`): a client sending huge feature lists must not grow the cache without bound.
PLAN_CACHE_SIZE = 256
PLAN_CACHE_BYTES = 8 << 20
#: A plan estimated above this is built for its request and not kept.
PLAN_CACHE_MAX_ENTRY_BYTES = PLAN_CACHE_BYTES // 16

_ONE_US = timedelta(microseconds=1)
_NEEDS_ESCAPE = re.compile(r"[%,={}]")
_DICTS_ONLY, _STRS_ONLY, _INTS_ONLY = {dict}, {str}, {int}


class FeatureValue(NamedTuple):
    """One served value: the value (None unless present), its event time (None when missing) and status."""

    value: Any
    event_ts: datetime | None
    status: str  # present | missing (no key) | expired (key still there, past the ttl)

    def __rich__(self) -> str:
        colour = {PRESENT: "green", MISSING: "yellow", EXPIRED: "red"}[self.status]
        return f"[{colour}]{self.status}[/]"


_MISSING_VALUE = FeatureValue(None, None, MISSING)
#: Shared infinite iterators and C-level constructors for building results with map/zip, with no Python frame
#: per value (a 100-entity x 8-feature read shapes 800 values).
_PRESENTS = repeat(PRESENT)
_FIRST = operator.itemgetter(0)
_new_tuple = tuple.__new__


def _feature_values(values: Iterable[Any], event_ts: list[datetime | None]) -> list[FeatureValue]:
    """Present FeatureValues of one feature for every entity: `tuple.__new__` skips FeatureValue's Python
    `__new__`; map and zip run in C."""
    return list(map(_new_tuple, repeat(FeatureValue), zip(values, event_ts, _PRESENTS)))


def _expired_value(event_ts: datetime | None) -> FeatureValue:
    return FeatureValue(None, event_ts, EXPIRED)


#: Logical types whose JSON text (as orjson writes it) never holds a comma: a column of them is written with one
#: `orjson.dumps` and split, instead of one call per value.
_COMMA_FREE = frozenset({types.INT, types.FLOAT, types.BOOL, types.TIMESTAMP, types.DATE})
_JSON_STATUS = {MISSING: b',"status":"missing","event_ts":', EXPIRED: b',"status":"expired","event_ts":'}


def _json_texts(values: list[Any], comma_free: bool) -> list[bytes]:
    """The JSON text of each value: one orjson call over the whole list, split at its commas, when no value's
    text can hold one; otherwise (strings, arrays, or a value orjson refuses) one call per value."""
    if comma_free and values:
        try:
            return orjson.dumps(values)[1:-1].split(b",")
        except orjson.JSONEncodeError:
            pass
    try:
        return list(map(orjson.dumps, values))
    except orjson.JSONEncodeError:
        return list(map(json_bytes, values))


def _record_builder(names: Sequence[str]) -> Callable[..., dict[str, Any]]:
    """A function of one value per name returning the record `{name: value, ...}`, as a dict display: mapped
    over the feature columns it builds 100 records in a quarter less time than `dict(zip(names, row))` (the
    records' largest cost after their FeatureValues, bench/README.md). The names enter the source only through
    `repr`, the arguments are `v0, v1, ...`."""
    args = ", ".join(f"v{i}" for i in range(len(names)))
    return eval(f"lambda {args}: {{{', '.join(f'{name!r}: v{i}' for i, name in enumerate(names))}}}")  # noqa: S307


def _json_template(names: Sequence[str]) -> list[bytes]:
    """One entity's item of `OnlineResult.to_json` as pieces of JSON text, the gaps empty: the entity at 1, and
    for the name at position j its value at 3 + 4j, its status piece at 4 + 4j and its event time at 5 + 4j."""
    pieces = [b',{"entity":', b""]
    for j, name in enumerate(names):
        pieces += [(b',"values":{' if j == 0 else b"},") + orjson.dumps(name) + b':{"value":', b"",
                   b',"status":"present","event_ts":', b""]
    return pieces + [b"}}}"]


class _ViewPlan(NamedTuple):
    name: str
    version: str
    key_format: str  # "<prefix>:{customer_id=%s}:<view>:<version>": `key_parts` joined by %s, %-escaped
    key_parts: tuple[str, ...]  # the static text around the key texts: "<prefix>:{customer_id=", "}:<view>:<version>"
    key_texts: Any  # itemgetter of this view's key texts (one str, or a tuple) from the entity's key texts
    key_names: tuple[str, ...]  # this view's join keys, in `key_format` order
    ttl_us: int
    rows: RowDecoder
    columns: tuple[tuple[str, int], ...]  # (output name, position in the stored array)
    out_names: tuple[str, ...]  # the output names of `columns`
    getters: tuple[Any, ...]  # itemgetter of each of `columns` from a decoded row
    slots: tuple[int, ...]  # the position in the request's output names of each of `columns`
    blank: list[None]  # stands for a missing row (every position None), so getters apply to every row


class _Plan:
    """Everything a request shape needs that does not depend on the entities, for one registry snapshot."""

    def __init__(self, registry: Registry, registry_id: bytes | None, wanted: list[Feature], prefix: str):
        if not wanted:
            raise UnknownNameError("no features requested: name a feature service or at least one view.feature")
        self.registry_id = registry_id
        self.id_key = keys.registry_id_key(prefix)
        views = [registry.view(name) for name in dict.fromkeys(f.view for f in wanted)]
        self.key_names = tuple(dict.fromkeys(k for v in views for k in v.key_names))
        names = output_names(wanted, reserved=self.key_names)
        self.names = tuple(names)
        self.dtypes = {n: f.dtype for n, f in zip(names, wanted)}
        self.tags: list[tuple[tuple[str, str], ...]] = list(dict.fromkeys(v.join_keys for v in views))
        key_types = {k: t for jk in self.tags for k, t in jk}
        self.key_types = key_types
        #: the columns of `OnlineResult.to_columns` / `to_arrow`, in order
        self.column_names = [*self.key_names, *(c for n in names for c in (n, n + STATUS_SUFFIX, n + EVENT_TS_SUFFIX))]
        #: (name, (name, type)) of each join key, in `key_names` order: each key's text is built once per entity
        self.key_specs = tuple((k, (k, key_types[k])) for k in self.key_names)
        slot = {n: i for i, n in enumerate(names)}
        plans = []
        for view in views:
            position = {f.name: i + 1 for i, f in enumerate(view.features)}
            columns = tuple((n, position[f.name]) for n, f in zip(names, wanted) if f.view == view.name)
            view_keys = [k for k, _ in view.join_keys]
            key_parts = (f"{prefix}:{{{view_keys[0]}=", *(f",{k}=" for k in view_keys[1:]),
                         f"}}:{view.name}:{view.version}")
            plans.append(_ViewPlan(
                view.name, view.version, "%s".join(part.replace("%", "%%") for part in key_parts), key_parts,
                operator.itemgetter(*(self.key_names.index(k) for k, _ in view.join_keys)),
                tuple(k for k, _ in view.join_keys),
                view.ttl // _ONE_US, RowDecoder([f.dtype for f in view.features]), columns,
                tuple(n for n, _ in columns),
                tuple(operator.itemgetter(p) for _, p in columns), tuple(slot[n] for n, _ in columns),
                [None] * (len(view.features) + 1)))
        self.views = tuple(plans)
        self.record = _record_builder(self.names)
        #: one entity's item of the HTTP response's results, as JSON pieces (OnlineResult.to_json fills the gaps)
        self.json_template = _json_template(self.names)
        self.needed = frozenset(self.key_names)
        #: every join key is a string key (then `keys` may check and format a batch column by column)
        self.string_keys = all(key_types[k] == types.STRING for k in self.key_names)
        self.known = frozenset(k for e in registry.entities.values() for k, _ in e.join_keys) | self.needed
        self._arrow: _ArrowLayout | None = None

    def arrow_layout(self) -> _ArrowLayout:
        """The plan's Arrow layout and schema, made on the first `to_arrow` (pyarrow is imported only then);
        two threads making it at once make equal ones."""
        layout = self._arrow
        if layout is None:
            layout = self._arrow = _ArrowLayout(self)
        return layout

    def keys(self, entities: Sequence[Mapping[str, Any]]) -> list[str]:
        """The registry id key, then for each entity the key of each view (entity-major)."""
        if self.string_keys and len(entities) > 1:
            fast = self._string_keys(entities)
            if fast is not None:
                return fast
        out = [self.id_key]
        append = out.append
        views, specs, needed = self.views, self.key_specs, len(self.needed)
        search = _NEEDS_ESCAPE.search
        for entity in entities:
            try:
                if len(entity) != needed:
                    self._check_names(entity)
                texts = []
                for name, spec in specs:
                    value = entity[name]
                    # the common case inline: a plain str for a string key, nothing to escape
                    texts.append(value if value.__class__ is str and spec[1] == types.STRING and not search(value)
                                 else _key_text(value, spec))
            except KeyError:
                self._check_names(entity)
                raise AssertionError("unreachable") from None  # pragma: no cover
            except TypeError:  # not a mapping (a list, a string, a number...)
                raise UnknownNameError(f"an entity is an object of join keys, e.g. "
                                       f"{{{', '.join(repr(k) + ': ...' for k in self.key_names)}}}; "
                                       f"got {entity!r}") from None
            for v in views:
                append(v.key_format % v.key_texts(texts))
        return out

    def _string_keys(self, entities: Sequence[Mapping[str, Any]]) -> list[str] | None:
        """`keys` for a batch of dicts whose join keys are all plain strings needing no escaping, the checks and
        the formatting done column by column in C; None when anything needs the per-entity path (which gives
        the errors)."""
        if entities.__class__ is not list or set(map(type, entities)) != _DICTS_ONLY or \
                set(map(len, entities)) != {len(self.key_names)}:
            return None
        try:
            columns = {k: list(map(operator.itemgetter(k), entities)) for k in self.key_names}
        except KeyError:
            return None
        for column in columns.values():
            if set(map(type, column)) != _STRS_ONLY or _NEEDS_ESCAPE.search("".join(column)):
                return None
        out = [self.id_key] * (1 + len(entities) * len(self.views))
        nv = len(self.views)
        for vi, view in enumerate(self.views):
            # each key the join of its static parts and key texts, interleaved by zip: 2x faster than `%`
            pieces = [repeat(view.key_parts[0])]
            for k, part in zip(view.key_names, view.key_parts[1:]):
                pieces += (columns[k], repeat(part))
            out[1 + vi::nv] = map("".join, zip(*pieces))
        return out

    def _check_names(self, entity: Mapping[str, Any]) -> None:
        if not isinstance(entity, Mapping):
            raise TypeError("not a mapping")
        given = list(entity)
        unknown = [k for k in given if k not in self.known]
        absent = [k for k in self.key_names if k not in entity]
        if unknown or absent:
            parts = []
            if absent:
                parts.append(f"missing entity key(s) {', '.join(absent)}")
            if unknown:
                parts.append(f"unknown entity key(s) {', '.join(unknown)}")
            raise UnknownNameError(
                f"{'; '.join(parts)}: this request needs {', '.join(self.key_names)} (entity keys known: "
                f"{', '.join(sorted(self.known))}); the entity gives {', '.join(map(str, given)) or 'no keys'}"
            )

    def decode(self, entities: Sequence[Mapping[str, Any]], values: list[bytes | None],
               now_us: int) -> OnlineResult:
        """Decode the MGET reply (registry id first): statuses, and rows converted (view by view: one loop of
        C-level comprehensions per view, not a Python-level step per value)."""
        views = self.views
        nv = len(views)
        if len(values) == nv + 1:  # one entity: a row per view, without the slicing a batch needs
            rows = [None if raw is None else view.rows.decode(raw) for view, raw in zip(views, values[1:])]
            return OnlineResult(self, entities, rows, [
                MISSING if row is None else PRESENT if row[0] >= now_us - view.ttl_us else EXPIRED
                for view, row in zip(views, rows)])
        rows: list[list | None] = [None] * (len(values) - 1)
        status: list[str] = [MISSING] * (len(values) - 1)
        for vi, view in enumerate(views):
            threshold = now_us - view.ttl_us
            raws = values[1 + vi::nv]
            present = [raw for raw in raws if raw is not None]
            got: list[list | None] = view.rows.decode_many(present)  # type: ignore[assignment]
            if len(present) != len(raws):
                decoded = iter(got)
                got = [None if raw is None else next(decoded) for raw in raws]
            rows[vi::nv] = got
            status[vi::nv] = [MISSING if row is None else PRESENT if row[0] >= threshold else EXPIRED for row in got]
        return OnlineResult(self, entities, rows, status)


def _key_text(value: Any, key: tuple[str, str]) -> str:
    """An entity key value as it appears in a Redis key (keys.key_text), type-checked against the key's type."""
    name, key_type = key
    if key_type == types.STRING:
        if value.__class__ is not str:
            if not isinstance(value, str):  # numpy.str_ is a str subclass: accepted, as its plain text
                raise UnknownNameError(f"entity key {name} is a string key; got {value!r} ({type(value).__name__})")
            value = str(value)
        return keys.escape(value) if _NEEDS_ESCAPE.search(value) else value
    return str(_typed_key(value, name, key_type))


def _typed_key(value: Any, name: str, key_type: str) -> Any:
    """The key value as its declared type. Int keys accept ints, integer scalars (numpy.int64...) and decimal
    strings (as the CLI passes them); string keys accept str and its subclasses (numpy.str_)."""
    if key_type == "int":
        if value.__class__ is int:
            return value
        if isinstance(value, str):
            if (number := keys.parse_int(value)) is not None:
                return number
        elif (not isinstance(value, bool) and hasattr(value, "__index__") and not hasattr(value, "__len__")
              and getattr(getattr(value, "dtype", None), "kind", "") != "b"):  # numpy 1.x's bool_ has __index__
            try:  # numpy / pandas integer scalars implement __index__; numpy 2's bool_ and floats refuse it
                return operator.index(value)
            except TypeError:
                pass
        raise UnknownNameError(f"entity key {name} is an int key; got {value!r} ({type(value).__name__}): "
                               "give an integer or a decimal string")
    if not isinstance(value, str):
        raise UnknownNameError(f"entity key {name} is a string key; got {value!r} ({type(value).__name__})")
    return value if value.__class__ is str else str(value)


class OnlineResult:
    """The values read for a batch of entities, to shape as records, columns or an Arrow table.

    Attributes:
        names: the output feature names, in request order (see registry.output_names).
        versions: the feature view versions served, `{view: version}` (one registry snapshot).
        registry_id: the id of the registry snapshot the values were read with.
    """

    def __init__(self, plan: _Plan, entities: Sequence[Mapping[str, Any]], rows: list[list | None],
                 status: list[str]):
        self._plan, self._entities, self._rows, self._status = plan, entities, rows, status
        self._time_map: dict[int | None, datetime | None] | None = None
        self.names = plan.names

    @property
    def versions(self) -> dict[str, str]:
        return {v.name: v.version for v in self._plan.views}

    @property
    def registry_id(self) -> str | None:
        registry_id = self._plan.registry_id
        return registry_id.decode() if isinstance(registry_id, bytes) else registry_id

    def __len__(self) -> int:
        return len(self._entities)

    def status_counts(self) -> dict[str, int]:
        """How many feature values are present, missing and expired in this result."""
        counts = dict.fromkeys(STATUSES, 0)
        plan = self._plan
        nv = len(plan.views)
        for k, s in enumerate(self._status):
            counts[s] += len(plan.views[k % nv].columns)
        return counts

    def _times(self) -> dict[int | None, datetime | None]:
        """Event time (µs) -> aware UTC datetime for every row read, each distinct time converted once (a
        datetime costs about a microsecond; values of a batch-computed view share their event times), and
        None -> None for missing rows."""
        times = self._time_map
        if times is None:
            times = dict.fromkeys([row[0] for row in self._rows if row is not None])
            for us in times:
                times[us] = from_us(us)
            times[None] = None
            self._time_map = times
        return times

    def _view_columns(self) -> Iterable[tuple[_ViewPlan, list[str], list[list], list[tuple[int, str]]]]:
        """Per view, one item per entity: statuses and rows (a row of Nones where the key is missing, so that
        C-level getters work on every row), and the (entity index, status) of the rows not served as present
        (usually none: shaping then runs no Python-level step per value)."""
        nv = len(self._plan.views)
        for vi, view in enumerate(self._plan.views):
            status = self._status[vi::nv]
            rows = self._rows[vi::nv]
            if MISSING in status or EXPIRED in status:
                blank = view.blank
                rows = [blank if row is None else row for row in rows]
                others = [(i, s) for i, s in enumerate(status) if s is not PRESENT]
            else:
                others = []
            yield view, status, rows, others

    def _value_columns(self, present: Callable[[Iterable[Any], list[Any]], list[Any]],
                       missing: Any, expired: Callable[[Any], Any], times: Mapping[Any, Any]) -> list[list[Any]]:
        """One list per output name (in `names` order), one item per entity: `present(values, event times)`
        over all the view's rows, then `missing` / `expired(event time)` where the value is not served; event
        times are `times[µs]`."""
        times = times.__getitem__
        by_name: dict[str, list[Any]] = {}
        for view, _status, rows, others in self._view_columns():
            event_ts = list(map(times, map(_FIRST, rows)))
            for name, getter in zip(view.out_names, view.getters):
                by_name[name] = present(map(getter, rows), event_ts)
            if others:
                for i, s in others:
                    item = missing if s is MISSING else expired(event_ts[i])
                    for name in view.out_names:
                        by_name[name][i] = item
        return list(map(by_name.__getitem__, self._plan.names))

    def to_records(self) -> list[dict[str, FeatureValue]]:
        """One dict per entity (in request order), mapping each output name to its FeatureValue.

        The cyclic garbage collector is paused while they are built (see `_CollectorPaused`)."""
        with _CollectorPaused():
            columns = self._value_columns(_feature_values, _MISSING_VALUE, _expired_value, self._times())
            return list(map(self._plan.record, *columns))

    def to_json(self) -> bytes:
        """The HTTP response's `results`: a JSON array of `{"entity": {...}, "values": {name: {"value", "status",
        "event_ts"}}}`, one per entity in request order, names in request order, event times as orjson writes an
        aware UTC datetime (`2026-11-23T00:00:00+00:00`).

        Written as JSON text with no Python object per value (bench/README.md, "HTTP"): each entity's item is a
        list of pieces from the plan's template (`_json_template`); the gaps are filled column by column with
        slice assignments (the entities' texts, each feature's value texts from one orjson call, each view's
        event time texts, each distinct time formatted once), then the rare values not served as present are
        patched, and everything is joined once.
        """
        plan = self._plan
        n = len(self._entities)
        if not n:
            return b"[]"
        texts = {us: b"null" if ts is None else orjson.dumps(ts) for us, ts in self._times().items()}
        template = plan.json_template
        width = len(template)
        out = template * n
        out[-1] = b"}}}]"
        entities = self._entities
        if set(map(type, entities)) != _DICTS_ONLY:  # any other Mapping is written as the object it stands for
            entities = [dict(e) for e in entities]
        out[1::width] = _json_texts(list(entities), False)
        for view, _status, rows, others in self._view_columns():
            event_ts = list(map(texts.__getitem__, map(_FIRST, rows)))
            for name, getter, slot in zip(view.out_names, view.getters, view.slots):
                out[3 + 4 * slot::width] = _json_texts(list(map(getter, rows)), plan.dtypes[name] in _COMMA_FREE)
                out[5 + 4 * slot::width] = event_ts
            for i, s in others:  # a missing row's values and event time are null already (a blank row)
                for slot in view.slots:
                    at = i * width + 4 * slot
                    out[at + 3], out[at + 4] = b"null", _JSON_STATUS[s]
        out[0] = b'[{"entity":'
        return b"".join(out)

    def _key_columns(self) -> dict[str, list[Any]]:
        """Each join key's values as their declared type: taken in C when all are already plain str (or int)."""
        plan = self._plan
        columns = {}
        for k in plan.key_names:
            key_type = plan.key_types[k]
            column = list(map(operator.itemgetter(k), self._entities))
            if set(map(type, column)) != (_INTS_ONLY if key_type == types.INT else _STRS_ONLY):
                column = [_typed_key(v, k, key_type) for v in column]
            columns[k] = column
        return columns

    def to_columns(self) -> dict[str, list[Any]]:
        """Columns for batch scoring: the entity keys, then per feature `<name>`, `<name>__status` and
        `<name>__event_ts` (aware UTC datetimes), each a list with one item per entity."""
        columns: dict[str, list[Any]] = self._key_columns()
        by_name: dict[str, tuple[list, list, list]] = {}
        times = self._times().__getitem__
        for view, status, rows, others in self._view_columns():
            event_ts = list(map(times, map(_FIRST, rows)))
            for name, getter in zip(view.out_names, view.getters):
                values = list(map(getter, rows))
                for i, _ in others:  # missing rows are blank already; expired ones hold a value not served
                    values[i] = None
                by_name[name] = (values, list(status), list(event_ts))
        for name in self._plan.names:
            values, status, event_ts = by_name[name]
            columns[name] = values
            columns[name + STATUS_SUFFIX] = status
            columns[name + EVENT_TS_SUFFIX] = event_ts
        return columns

    def to_arrow(self) -> pa.Table:
        """The same columns as `to_columns`, as a `pyarrow.Table` with typed columns: values as their logical
        type (`arrow_type`), statuses as dictionary-encoded strings, event times as timestamp[us, UTC].

        Built with one Arrow array per group (per Arrow type: the entity keys and values of every column of
        that type end to end, the views' event times in µs with the int64 values; the status codes of the views
        whose rows are not all of one status), then sliced into columns: an array costs several µs whatever its length, and a
        one-entity read of 10 features has 31 columns, so one per column was 2x a raw read (bench/README.md).
        Which values go where, and the schema, are the plan's (`_ArrowLayout`, made once per plan): a read only
        fills the groups, converts and slices them, and assembles the table against the cached schema. A view's
        status and event time columns are one array shared by its features, and a view whose rows are all
        present, all missing (an unknown entity) or all expired takes a cached status array per (status,
        length) (Arrow arrays are immutable). One present entity of int and float features skips all of this: its
        table is read from an Arrow IPC message packed from the plan's template (`_OneRow`), in half the CPU."""
        layout = self._plan.arrow_layout()
        n = len(self._entities)
        if n == 1 and layout.one is not None and MISSING not in self._status and EXPIRED not in self._status:
            table = layout.one.table(self._entities[0], self._rows)
            if table is not None:
                return table
        import pyarrow as pa

        # filled in the order the layout took the columns: join keys, then per view its event times and values
        groups: list[list[Any]] = [[] for _ in layout.groups]
        for group, values in zip(layout.key_groups, self._key_columns().values()):
            groups[group] += values
        statuses: list[int | str] = []  # per view: its offset in `codes`, or the one status of all its rows
        codes: list[int] = []
        for (view, status, rows, others), ts_group, value_groups in zip(self._view_columns(), layout.ts_groups,
                                                                         layout.value_groups):
            groups[ts_group] += map(_FIRST, rows)
            for getter, group in zip(view.getters, value_groups):
                if others:  # missing rows are blank already; expired ones hold a value not served
                    values = list(map(getter, rows))
                    for i, _ in others:
                        values[i] = None
                    groups[group] += values
                else:
                    groups[group] += map(getter, rows)
            if not others:  # all present (the common case): one cached array per length
                statuses.append(PRESENT)
            elif len(others) == n and len(set(status)) == 1:  # all missing (an unknown entity) or all expired
                statuses.append(status[0])
            else:
                statuses.append(len(codes))
                codes += map(_STATUS_CODE.__getitem__, status)
        chunks: list[pa.Array] = []
        for (arrow_type_, typecode, count), values in zip(layout.groups, groups):
            array_ = _group_array(values, arrow_type_, typecode)
            chunks += [array_] if count == 1 else [array_.slice(k * n, n) for k in range(count)]
        for at in layout.ts_chunks:
            chunks[at] = chunks[at].view(layout.ts_type)
        coded = _status_array(codes) if codes else None
        chunks += [_all_of(at, n) if at.__class__ is str else coded.slice(at, n) for at in statuses]
        # through a record batch against the cached schema: a third cheaper than Table.from_arrays, and no field
        # is built from a name
        batch = pa.RecordBatch.from_arrays(list(map(chunks.__getitem__, layout.columns)), schema=layout.schema)
        return pa.Table.from_batches([batch], layout.schema)


class _ArrowLayout:
    """Where `OnlineResult.to_arrow` puts each value, per plan: its groups (one Arrow array each: the join keys
    and feature values of one logical type in column order, the views' event times, as µs, in the int group),
    each column's chunk, and the table's schema.

    Per read, the chunks are every group's columns in order (a group of one column is its whole array, else one
    slice of `n` values per column; the event time chunks viewed as timestamp[us, UTC]), then one status array
    per view; `columns[j]` is the chunk of the table's column j (`_Plan.column_names`). `to_arrow` fills the
    groups in the order the columns are taken here."""

    def __init__(self, plan: _Plan):
        import pyarrow as pa

        self.ts_type = arrow_type(types.TIMESTAMP)
        group_of: dict[str, int] = {}
        counts: list[int] = []

        def take(dtype: str) -> int:
            """A column of logical type `dtype`: its group; records its chunk (the group's next column)."""
            group = group_of.setdefault(dtype, len(group_of))
            if group == len(counts):
                counts.append(0)
            taken.append((group, counts[group]))
            counts[group] += 1
            return group

        taken: list[tuple[int, int]] = []  # (group, position in the group) of every column, in taking order
        self.key_groups = [take(plan.key_types[k]) for k in plan.key_names]
        self.ts_groups: list[int] = []
        self.value_groups: list[tuple[int, ...]] = []
        for view in plan.views:
            self.ts_groups.append(take(types.INT))
            self.value_groups.append(tuple(take(plan.dtypes[name]) for name in view.out_names))
        dtypes = list(group_of)
        self.groups = [(arrow_type(t), _TYPECODES.get(t), c) for t, c in zip(dtypes, counts)]
        first = [sum(counts[:g]) for g in range(len(counts))]  # each group's first chunk
        chunk = [first[g] + position for g, position in taken]
        at = dict(zip(plan.key_names, chunk))
        self.ts_chunks: list[int] = []
        taking = iter(chunk[len(plan.key_names):])  # the views' columns, in taking order
        statuses = len(chunk)  # the first view's status chunk follows every group's
        for vi, view in enumerate(plan.views):
            ts = next(taking)
            self.ts_chunks.append(ts)
            for name in view.out_names:
                at[name] = next(taking)
                at[name + STATUS_SUFFIX], at[name + EVENT_TS_SUFFIX] = statuses + vi, ts
        self.columns = [at[c] for c in plan.column_names]
        status_type = _all_of(PRESENT, 0).type
        self.schema = pa.schema(
            [pa.field(k, arrow_type(plan.key_types[k])) for k in plan.key_names]
            + [field for name in plan.names for field in (pa.field(name, arrow_type(plan.dtypes[name])),
                                                          pa.field(name + STATUS_SUFFIX, status_type),
                                                          pa.field(name + EVENT_TS_SUFFIX, self.ts_type))])
        #: one entity's table through Arrow IPC, or None where the plan's types are not covered (see _OneRow)
        self.one = _OneRow.make(plan, self)


#: The validity bitmap of each value of `_OneRow`'s template: bit 0 clear (a null); the other bits (padding,
#: which a reader ignores) mark it, so that its place before the value is checked
_ONE_VALIDITY = b"\xa6"
#: Bytes `_OneRow` keeps for a string join key: a longer key takes `to_arrow`'s general path
_ONE_KEY_BYTES = 64
#: Columns up to which a plan gets a `_OneRow` template (finding its sentinels scans the message once per value)
_ONE_MAX_COLUMNS = 512


class _OneRow:
    """One entity's `to_arrow` table, all present and without a null, through an Arrow IPC stream reader kept
    per thread: pyarrow builds the 31 columns of a 10-feature table in one C++ call, in about half the CPU of
    building and assembling them from Python (bench/README.md, "Arrow for one entity, second round").

    Per plan, pyarrow serializes a table of one row of sentinel values once: the stream's schema and status
    dictionaries (which each thread's reader reads first) and the record batch message, in which the place of
    each sentinel is found. The message then becomes one `struct.Struct`: a field at each place (a value; for
    the string key, its bytes and its length in the offsets buffer and in the message's buffer list) and the
    bytes between places as constant fields. A read packs the whole message in one call from the entity's keys
    and each view's event time and values (one itemgetter per row, by position as the general path takes them),
    and its thread's reader reads it from an in-memory file whose `read` is C (`io.BytesIO`, no Python frame per
    callback) (bench/README.md, "Arrow for one entity, third round").
    Every value column carries a validity bitmap (its byte, and its null count in the message's field nodes, are
    fields too), so a null value packs as well: 1% of the one-entity reads of the reference data hold one, and
    through the general path they were the p99 of the Arrow API (bench/README.md).
    Covered: int and float features, one string key up to `_ONE_KEY_BYTES` UTF-8 bytes, int keys; a value that
    does not pack (an int beyond 64 bits) or a longer key returns None, for the general path."""

    def __init__(self, plan: _Plan, prefix: bytes, message: struct.Struct, order: Callable[[list], tuple],
                 constants: list[bytes], text_of: int | None, values: list[int]):
        self.prefix, self.message, self.order, self.constants, self.text_of = prefix, message, order, constants, text_of
        #: the positions of the values in the parts `table` packs, and what follows the parts when none is null:
        #: each value's validity bit set, and its null count 0
        self.values, self.all_valid = values, [1] * len(values) + [0] * len(values)
        self.key_names = plan.key_names
        self.key_specs = tuple(spec for _, spec in plan.key_specs)
        #: the classes of the join keys' values as `table` packs them (others are typed first)
        self.key_classes = [str if plan.key_types[k] == types.STRING else int for k in plan.key_names]
        #: per view, its event time and values from its row, as a tuple
        self.row_getters = [operator.itemgetter(0, *(p for _, p in view.columns)) for view in plan.views]
        self._local = threading.local()
        import pyarrow as pa

        self._from_batches = pa.Table.from_batches

    @classmethod
    def make(cls, plan: _Plan, layout: _ArrowLayout) -> _OneRow | None:
        import pyarrow as pa

        if set(plan.dtypes.values()) - {types.INT, types.FLOAT} or len(plan.column_names) > _ONE_MAX_COLUMNS or \
                {plan.key_types[k] for k in plan.key_names} - {types.INT, types.STRING}:
            return None
        #: (kind, sentinel, index in the parts `table` packs: the join keys, then per view its event time and values)
        sentinels: list[tuple[str, int, int]] = []

        def sentinel(kind: str, part: int) -> pa.Array:
            value = 0x5A5E_0000_0000_0101 + 0x101 * len(sentinels)  # 8 bytes found nowhere else in the message
            sentinels.append((kind, value, part))
            if kind == types.FLOAT:
                return pa.array(struct.unpack("<d", struct.pack("<q", value)), pa.float64())
            return pa.array([value], pa.int64())

        def nullable(array: pa.Array) -> pa.Array:
            """`array` (one sentinel) with a validity bitmap: a null, so that the writer keeps the bitmap."""
            return pa.Array.from_buffers(array.type, 1, [pa.py_buffer(_ONE_VALIDITY), array.buffers()[1]], 1)

        columns: dict[str, pa.Array] = {}
        for part, k in enumerate(plan.key_names):
            if plan.key_types[k] == types.STRING:
                sentinels.append((types.STRING, 0, part))
                columns[k] = pa.array(["~" * _ONE_KEY_BYTES])
            else:
                columns[k] = sentinel(types.INT, part)
        start = len(plan.key_names)  # the view's event time in the parts, its values after it
        for view in plan.views:
            event_ts = sentinel(types.TIMESTAMP, start).view(layout.ts_type)
            for j, name in enumerate(view.out_names, start + 1):
                columns[name] = nullable(sentinel(plan.dtypes[name], j))
                columns[name + STATUS_SUFFIX] = _all_of(PRESENT, 1)
                columns[name + EVENT_TS_SUFFIX] = event_ts
            start += 1 + len(view.out_names)
        batch = pa.RecordBatch.from_arrays([columns[c] for c in plan.column_names], schema=layout.schema)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, layout.schema) as writer:
            writer.write_batch(batch)
        stream, message = sink.getvalue(), batch.serialize().to_pybytes()
        body = 8 + struct.unpack_from("<i", message, 4)[0]  # continuation marker, metadata length, metadata

        def found(pattern: bytes, start: int, end: int) -> list[int]:
            at, out = message.find(pattern, start, end), []
            while at >= 0:
                out.append(at)
                at = message.find(pattern, at + 1, end)
            return out

        # after the views' values in the parts: the string key's bytes and length (if any), each value's validity
        # bit and null count, then the constant fields
        spots: list[tuple[int, str, int]] = []  # (offset in the message, struct code, index in the parts)
        text_of = None
        flags = start + (2 if any(kind == types.STRING for kind, *_ in sentinels) else 0)  # the first validity bit
        values = [part for kind, _, part in sentinels if kind in (types.INT, types.FLOAT) and part >= len(plan.key_names)]
        value_names = [name for view in plan.views for name in view.out_names]  # in the order of `values`
        # the field nodes (length, null count) of the columns in order: the values' null count is 1 in the template
        nodes = found(b"".join(struct.pack("<qq", 1, c in value_names) for c in plan.column_names), 8, body)
        if len(nodes) != 1:
            return None
        for k, name in enumerate(value_names):
            spots.append((nodes[0] + 16 * plan.column_names.index(name) + 8, "q", flags + len(values) + k))
        for kind, value, part in sentinels:
            if kind == types.STRING:
                data = found(b"~" * _ONE_KEY_BYTES, body, len(message))
                offsets = found(struct.pack("<ii", 0, _ONE_KEY_BYTES), body, len(message))
                length = found(struct.pack("<qq", data[0] - body, _ONE_KEY_BYTES) if data else b"-", 8, body)
                if not (len(data) == len(offsets) == len(length) == 1):
                    return None  # also a second string key: its bytes would be found twice
                spots += [(data[0], f"{_ONE_KEY_BYTES}s", start), (offsets[0] + 4, "i", start + 1),
                          (length[0] + 8, "q", start + 1)]
                text_of = part
                continue
            at = found(struct.pack("<q", value), body, len(message))
            if not at or (kind != types.TIMESTAMP and len(at) != 1):
                return None
            spots += [(a, "d" if kind == types.FLOAT else "q", part) for a in at]
            if part in values:  # its validity bitmap: the 8 bytes before its value
                if message[at[0] - 8:at[0]] != _ONE_VALIDITY.ljust(8, b"\0"):
                    return None
                spots.append((at[0] - 8, "B", flags + values.index(part)))
        if stream.count(message) != 1 or not stream.endswith(message + b"\xff\xff\xff\xff\x00\x00\x00\x00"):
            return None
        constant = flags + 2 * len(values)  # the parts' first constant field
        fields, order, constants, pos = ["<"], [], [], 0
        for at, code, part in sorted(spots):
            if at > pos:
                fields.append(f"{at - pos}s")
                order.append(constant + len(constants))
                constants.append(message[pos:at])
            fields.append(code)
            order.append(part)
            pos = at + struct.calcsize("<" + code)
        fields.append(f"{len(message) - pos}s")
        order.append(constant + len(constants))
        constants.append(message[pos:])
        packer, getter = struct.Struct("".join(fields)), operator.itemgetter(*order)
        parts: list[Any] = [0] * start + ([b"~" * _ONE_KEY_BYTES, _ONE_KEY_BYTES] if text_of is not None else [])
        for kind, value, part in sentinels:
            if kind != types.STRING:
                parts[part] = struct.unpack("<d", struct.pack("<q", value))[0] if kind == types.FLOAT else value
        parts += [_ONE_VALIDITY[0]] * len(values) + [1] * len(values)  # the template's values are null
        if packer.pack(*getter(parts + constants)) != message:
            return None  # pragma: no cover - the places found do not rebuild the message: no template
        return cls(plan, stream[:stream.index(message)], packer, getter, constants, text_of, values)

    def table(self, entity: Mapping[str, Any], rows: list[list]) -> pa.Table | None:
        """The one-row table of `entity` and its rows (one per view, every one present), or None if they do
        not fit the template."""
        parts = [entity[name] for name in self.key_names]
        if list(map(type, parts)) != self.key_classes:  # numpy scalars, an int key given as text
            parts = [_typed_key(value, *spec) for value, spec in zip(parts, self.key_specs)]
        try:
            for getter, row in zip(self.row_getters, rows):
                parts += getter(row)
            if self.text_of is not None:
                text = parts[self.text_of].encode()
                if len(text) > _ONE_KEY_BYTES:
                    return None
                parts += (text, len(text))
            if None in parts:  # a null value: its validity bit clear, its null count 1, 0 in its slot
                valid = [parts[i] is not None for i in self.values]
                for i in self.values:
                    if parts[i] is None:
                        parts[i] = 0
                parts += valid
                parts += [1 - v for v in valid]
            else:
                parts += self.all_valid
            parts += self.constants
            message = self.message.pack(*self.order(parts))
        except (struct.error, UnicodeEncodeError, IndexError):
            return None  # None or an int beyond 64 bits, a lone surrogate, a row shorter than its view
        local = self._local
        feed = getattr(local, "feed", None)
        if feed is None:  # this thread's first read: its reader reads the schema now, the dictionaries and the
            import pyarrow as pa  # message on its first batch

            feed = io.BytesIO(self.prefix + message)
            local.reader = pa.ipc.open_stream(pa.PythonFile(feed, mode="r"))
            local.feed, local.message = feed, feed.getbuffer()[len(self.prefix):]
        else:  # every message of the plan is as long: written over the last one (in place), read from its start
            local.message[:] = message
            feed.seek(len(self.prefix))
        try:
            return self._from_batches([local.reader.read_next_batch()])
        except Exception:
            local.feed = None  # pragma: no cover - a message the reader refuses: the general path, a new reader
            return None


_STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
#: How `_group_array` copies a group of a logical type into buffers itself: `array.array` type codes of the
#: fixed-width ones, "s" for strings; "[q" marks int arrays, left to `pa.array` but for a bool among their items
_TYPECODES = {types.INT: "q", types.FLOAT: "d", types.STRING: "s", types.ARRAY_INT: "[q"}
#: Up to this many strings a string group is encoded by `_group_array`; beyond, `pa.array` is faster
_FEW_STRINGS = 16


def _group_array(values: list[Any], arrow_type_: pa.DataType, typecode: str | None) -> pa.Array:
    """One `to_arrow` group as an Arrow array. Ints and floats with no null are copied by `array.array` into a
    buffer that the array wraps, a few strings are encoded and their offsets summed here: for the few values of
    a one-entity read this takes half of `pa.array`'s time (bench/README.md). A null, or a value the buffer's
    type does not take (a float among ints, an int beyond 64 bits, a lone surrogate), leaves the conversion to
    `pa.array`, with its result and errors. A bool in an int feature or in an int array feature (no sync writes
    one, another writer might) is 1 or 0 on every path, equal to the records API's True or False (Python's bool
    is an int), where `pa.array` alone would refuse it."""
    import pyarrow as pa

    try:
        if typecode == "s":
            if len(values) <= _FEW_STRINGS:
                encoded = list(map(str.encode, values))
                offsets = array.array("i", accumulate(map(len, encoded), initial=0))
                return pa.Array.from_buffers(arrow_type_, len(values), [None, pa.py_buffer(offsets),
                                                                        pa.py_buffer(b"".join(encoded))])
        elif typecode == "[q":
            return pa.array(values, arrow_type_)
        elif typecode is not None:
            return pa.Array.from_buffers(arrow_type_, len(values), [None, pa.py_buffer(array.array(typecode, values))])
    except (TypeError, OverflowError, UnicodeEncodeError):  # pa.ArrowTypeError is a TypeError
        pass
    if typecode == "q":
        values = [int(v) if v.__class__ is bool else v for v in values]
    elif typecode == "[q":
        values = [v if v is None else [int(x) if x.__class__ is bool else x for x in v] for v in values]
    return pa.array(values, arrow_type_)


def _status_array(codes: list[int]) -> pa.Array:
    """Status codes as a dictionary array of the three statuses (3x faster than dictionary_encode)."""
    import pyarrow as pa

    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), _status_dictionary())


@functools.lru_cache(maxsize=None)
def _status_dictionary() -> pa.Array:
    import pyarrow as pa

    return pa.array(STATUSES, pa.string())


@functools.lru_cache(maxsize=64)
def _all_of(status: str, n: int) -> pa.Array:
    """A status column of `n` values all `status`; shared between results (Arrow arrays are immutable)."""
    return _status_array([_STATUS_CODE[status]] * n)


@functools.lru_cache(maxsize=None)
def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type of a logical type (featuremart.types); cached: building the types reads the environment
    (pyarrow's time zone lookup), which was half of a one-entity `to_arrow`."""
    import pyarrow as pa

    return {
        types.STRING: pa.string(), types.INT: pa.int64(), types.FLOAT: pa.float64(), types.BOOL: pa.bool_(),
        types.TIMESTAMP: pa.timestamp("us", tz="UTC"), types.DATE: pa.date32(),
        types.ARRAY_FLOAT: pa.list_(pa.float64()), types.ARRAY_INT: pa.list_(pa.int64()),
        types.ARRAY_STRING: pa.list_(pa.string()),
    }[dtype]


class _PlanCache:
    """Plans by request shape, bounded by count and by estimated bytes; the oldest are evicted first.

    The estimate counts the request shape (a client may send a feature list of a megabyte, repeating one
    reference: the key is then far bigger than the plan) and the plan (per output name and per view). Reads
    are lock-free dict lookups; inserts take a lock so that concurrent evictions keep the byte count right.
    """

    def __init__(self) -> None:
        self._plans: dict[tuple, tuple[_Plan, int]] = {}
        self._lock = threading.Lock()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, shape: tuple) -> _Plan | None:
        hit = self._plans.get(shape)
        return None if hit is None else hit[0]

    def put(self, shape: tuple, plan: _Plan) -> None:
        cost = _plan_cost(shape, plan)
        if cost > PLAN_CACHE_MAX_ENTRY_BYTES:
            return  # built for this request only
        with self._lock:
            if shape in self._plans:
                return
            while self._plans and (len(self._plans) >= PLAN_CACHE_SIZE or self.nbytes + cost > PLAN_CACHE_BYTES):
                self.nbytes -= self._plans.pop(next(iter(self._plans)))[1]
            self._plans[shape] = (plan, cost)
            self.nbytes += cost


def _plan_cost(shape: tuple, plan: _Plan) -> int:
    """Estimated bytes held by a cache entry: the shape tuple and its strings, and the plan's per-name data."""
    service, features = shape
    size = sys.getsizeof(shape) + (sys.getsizeof(service) if service is not None else 0)
    if features is not None:
        size += sys.getsizeof(features) + sum(map(sys.getsizeof, features))
    return size + 500 * len(plan.names) + 1000 * len(plan.views)  # per name: dtypes, slots, JSON template pieces


class _State(NamedTuple):
    registry: Registry
    registry_id: bytes | None
    plans: _PlanCache


class OnlineReader:
    """Reads features from the online store using the registry snapshot the last sync published.

    Safe to share between threads: the registry, its id and the plan cache are swapped together, and every
    read checks the id it was planned with against the one in Redis, in the same MGET as the values.
    """

    def __init__(self, store: OnlineStore):
        self.store = store
        self._state: _State | None = None
        self._refresh_lock = threading.Lock()
        #: a featuremart.servedlog.ServedLog recording every read (set by its `attach`), or None
        self.served_log: Any = None

    @classmethod
    def connect(cls, url: str | None = None, *, prefix: str | None = None) -> OnlineReader:
        """A reader needing only Redis (no dbt project, no warehouse): `url` and `prefix` default to the
        environment variables FEATUREMART_REDIS_URL and FEATUREMART_PREFIX, then the prefix to `fm`."""
        url = url or os.environ.get(URL_ENV)
        if not url:
            raise ConfigError(f"no online store URL: pass --redis-url or set {URL_ENV} (e.g. redis://host:6379/0)")
        prefix = prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
        return cls(OnlineStore.connect(url, embedded_dir=Path("."), prefix=prefix))

    @property
    def registry(self) -> Registry:
        """The registry snapshot in use (loaded on first use; replaced when a read sees a new one)."""
        return self._current().registry

    @property
    def registry_id(self) -> str | None:
        registry_id = self._current().registry_id
        return registry_id.decode() if isinstance(registry_id, bytes) else registry_id

    def _current(self) -> _State:
        state = self._state
        if state is None:
            self.refresh()
            state = self._state
            assert state is not None
        return state

    def refresh(self) -> None:
        """Load the published registry snapshot (a sync must have run against this store)."""
        with self._refresh_lock:
            snapshot, registry_id = self.store.read_registry(keys.registry_key(self.store.prefix))
            if snapshot is None:
                raise NotPublishedError(f"no registry published in the online store at {self.store.url} "
                                        f"(key {keys.registry_key(self.store.prefix)}): run `featuremart sync` "
                                        f"first, or if it wrote under another online_store.key_prefix, pass "
                                        f"--prefix (or set {PREFIX_ENV})")
            if self._state is None or self._state.registry_id != registry_id:
                self._state = _State(Registry.from_snapshot(snapshot), registry_id, _PlanCache())

    def check_registry(self) -> Registry:
        """The current registry, after checking (one GET) that it is still the published one."""
        state = self._current()
        if self.store.mget([keys.registry_id_key(self.store.prefix)])[0] != state.registry_id:
            self.refresh()
        return self._current().registry

    def _plan(self, service: str | None, features: Iterable[str] | None) -> _Plan:
        state = self._current()
        shape = (service, None if features is None else tuple(features))
        plan = state.plans.get(shape)
        if plan is None:
            if service is not None and features is not None:
                raise UnknownNameError("name either a feature service or a list of features, not both")
            wanted = state.registry.resolve(service=service, features=None if features is None else list(shape[1]))
            plan = _Plan(state.registry, state.registry_id, wanted, self.store.prefix)
            state.plans.put(shape, plan)
        return plan

    def read(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
             features: Iterable[str] | None = None, now: datetime | None = None,
             request_id: str | None = None) -> OnlineResult:
        """Read a feature service (or a list of `view.feature` / `view.*`) for a batch of entities.

        `now` (default: the clock) decides which values are expired; a naive datetime is taken as UTC.
        `request_id` is the id the served-feature log records this read under, when one is attached (default:
        the one set by `featuremart.servedlog.request_id(...)`, else a generated one).
        Raises UnknownNameError for an unknown service, view, feature or entity key name, listing what exists.
        """
        if features is not None and not isinstance(features, (list, tuple)):
            features = list(features)
        now_us = time.time_ns() // 1000 if now is None else _epoch_us(now)
        for _ in range(3):
            plan = self._plan(service, features)
            values = self.store.mget(plan.keys(entities))
            if values[0] == plan.registry_id:
                with _CollectorPaused():
                    result = plan.decode(entities, values, now_us)
                if self.served_log is not None:  # queues the result; never blocks or raises (servedlog)
                    self.served_log.record(result, values, service, features, now_us, request_id)
                return result
            self.refresh()  # a sync published a new registry since this plan was made: read again with it
        raise FeaturemartError("the registry changed three times during one read; is a sync looping?")

    def get(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
            features: Iterable[str] | None = None, now: datetime | None = None,
            request_id: str | None = None) -> list[dict[str, FeatureValue]]:
        """One dict per entity, mapping each output name (see registry.output_names) to its FeatureValue."""
        return self.read(entities, service=service, features=features, now=now, request_id=request_id).to_records()


class _CollectorPaused:
    """`with _CollectorPaused():` runs its block with Python's cyclic garbage collector paused.

    A 100-entity read allocates about a thousand objects it tracks (the decoded rows, a FeatureValue per value,
    a dict per entity): one or two collections of the young generation per read, each traversing everything
    young, for objects that hold no cycle and are freed by their reference counts. Paused while a result is
    decoded and shaped, a 100-entity read of records took about 30 µs (5%) less (bench/README.md, "Online
    reads: the garbage collector"). Only a collector that was running is enabled again (also after an error),
    so an application that disabled it keeps it disabled; concurrent reads each restore what they found."""

    __slots__ = ("collecting",)

    def __enter__(self) -> None:
        self.collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.collecting:
            gc.enable()


def _epoch_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // _ONE_US
