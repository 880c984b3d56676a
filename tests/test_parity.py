"""Rules implemented twice, checked once: every case runs through both implementations and must agree.

- the ttl grammar: `featuremart.config.parse_duration` (Python) and `_parse_ttl` (Jinja);
- output column names: `featuremart.registry.output_names` (online reads) and `_pit_output_names` (the
  point-in-time join), including the collisions both refuse;
- which columns of a view are features: the registry (Python) and `view.*` in a training set
  (`_non_feature_columns` + `_feature_columns`, Jinja);
- the Redis key format and value encoding: `featuremart.online.keys` / `codec` (Python, the read side) and
  `featuremart.sql.online_payload` (SQL run by DuckDB and by PostgreSQL, the write side).

The Jinja side is rendered by real dbt: one `dbt run-operation` renders every case (a macro added to a copy of
the project prints the results as JSON).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from featuremart import sql, types
from featuremart.config import load_features_yml, parse_duration
from featuremart.errors import ValidationError
from featuremart.manifest import load_manifest
from featuremart.online import keys
from featuremart.online.codec import RowDecoder
from featuremart.registry import Feature, FeatureView, Relation, build_registry, output_names
from tests.conftest import copy_project

pytestmark = pytest.mark.integration

# --- the cases ---------------------------------------------------------------------------------------------

TTL_CASES = [
    "30d", "12h", "90m", "3600s", "2w", "0s", "1 day", "7 Days", " 45 seconds ", "3 HRS", "10min", "2wk",
    "1 week", "5 mins", "30D", "30d\n", "\t30d", "007d", "١٢d", "３０d",  # Unicode digits: both sides take ASCII digits only
    # rejected
    "", " ", "d", "30", "30 ", "-1d", "+1d", "1.5h", "1e3s", "30x", "30 d d", "30months", "1mo", "1y", "30dd",
    "30 d,", "d30", "30ms", "３０ｄ", 30, 0, 1.5, True, False, None, ["30d"], {"d": 30},
]

NAME_CASES = [  # each: the requested views of one request, in order
    [{"name": "a", "keys": ["customer_id"], "features": ["x", "y"]}],
    [{"name": "a", "keys": ["customer_id"], "features": ["x", "y"]},
     {"name": "b", "keys": ["merchant_id"], "features": ["X", "z"]}],  # case-insensitive: a__x, b__X
    [{"name": "a", "keys": ["customer_id"], "features": ["merchant_id", "spend"]},
     {"name": "b", "keys": ["merchant_id"], "features": ["risk"]}],  # a feature named like a join key
    [{"name": "a", "keys": ["customer_id"], "features": ["Customer_ID2", "n"]},
     {"name": "pair", "keys": ["customer_id", "merchant_id"], "features": ["n", "m"]},
     {"name": "c", "keys": ["customer_id"], "features": ["n"]}],  # three share a name
    [{"name": "a", "keys": ["customer_id"], "features": ["b__x"]},
     {"name": "b", "keys": ["customer_id"], "features": ["x"]},
     {"name": "c", "keys": ["customer_id"], "features": ["x"]}],  # b__x twice: refused by both
    [{"name": "a", "keys": ["customer_id"], "features": ["a__x", "x"]},
     {"name": "b", "keys": ["customer_id"], "features": ["x"]}],  # a__x twice: refused by both
    [{"name": "a", "keys": ["customer_id"], "features": ["ünï", "ÜNÏ2"]},
     {"name": "b", "keys": ["merchant_id"], "features": ["ünï"]}],
]

FEATURE_CASES = [  # (entity, meta beyond entity/timestamp, column meta, warehouse columns in order)
    ("customer", {}, {}, ["customer_id", "event_ts", "spend", "n"]),
    ("customer", {"changed_at": "updated_at"}, {}, ["customer_id", "event_ts", "spend", "updated_at", "n"]),
    ("customer", {"changed_at": "Updated_At"}, {"computed_at": False, "N": False},
     ["customer_id", "event_ts", "spend", "updated_at", "computed_at", "n", "extra"]),
    (["customer", "merchant"], {}, {"spend": True}, ["merchant_id", "customer_id", "event_ts", "spend", "Note"]),
    ("customer", {}, {"legacy": False}, ["customer_id", "event_ts", "legacy", "kept"]),  # meta under `meta:`
]
#: FEATURE_CASES' warehouse type of each column (all columns are of types featuremart serves).
COLUMN_TYPES = {"customer_id": "VARCHAR", "merchant_id": "VARCHAR", "event_ts": "TIMESTAMP",
                "updated_at": "TIMESTAMP", "computed_at": "TIMESTAMP"}

# --- the Jinja side: one dbt invocation ---------------------------------------------------------------------

PARITY_MACRO = """
{% macro parity_cases(cases) %}
    {%- set out = {'ttl': [], 'names': [], 'features': []} -%}
    {%- for ttl in cases.ttl -%}
        {%- do out.ttl.append(featuremart._parse_ttl(ttl)) -%}
    {%- endfor -%}
    {%- for views in cases.names -%}
        {%- set resolved = [] -%}
        {%- for view in views -%}
            {%- do resolved.append({'name': view.name, 'key_columns': view['keys'], 'features': view.features}) -%}
        {%- endfor -%}
        {%- do out.names.append(featuremart._pit_output_names(resolved)) -%}
    {%- endfor -%}
    {%- set entities = featuremart._featuremart_entities('parity') -%}
    {%- for case in cases.features -%}
        {%- set keys = [] -%}
        {%- for entity in ([case.meta.entity] if case.meta.entity is string else case.meta.entity) -%}
            {%- do keys.extend(entities[entity]) -%}
        {%- endfor -%}
        {%- set excluded = featuremart._non_feature_columns(keys, case.meta, case.node_columns) -%}
        {%- do out.features.append(featuremart._feature_columns(case.columns, excluded)) -%}
    {%- endfor -%}
    {%- do print('PARITY ' ~ tojson(out)) -%}
{% endmacro %}
"""


def _column_node(name: str, feature: bool, legacy: bool) -> dict:
    block = {"featuremart": {"feature": feature}}
    return {"name": name, "meta": block} if legacy else {"name": name, "config": {"meta": block}}


def _feature_case(entity, meta, column_meta, columns) -> dict:
    return {"meta": {"entity": entity, "timestamp": "event_ts", **meta},
            "node_columns": {name: _column_node(name, flag, legacy=name == "legacy")
                             for name, flag in column_meta.items()},
            "columns": columns}


@pytest.fixture(scope="module")
def jinja(tmp_path_factory) -> dict:
    """Every case rendered by the package's macros, in one `dbt run-operation` on a copy of the project."""
    project = copy_project(tmp_path_factory.mktemp("parity") / "project")
    (project / "macros" / "parity_cases.sql").write_text(PARITY_MACRO)
    cases = {"ttl": TTL_CASES, "names": NAME_CASES,
             "features": [_feature_case(*case) for case in FEATURE_CASES]}
    env = {**os.environ, "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           "FEATUREMART_DUCKDB_PATH": str(project / "parity.duckdb")}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dbt")), "run-operation", "parity_cases", "--args",
         json.dumps({"cases": cases}), "--project-dir", str(project), "--profiles-dir", str(project), "--quiet"],
        cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PARITY "))
    return json.loads(line.removeprefix("PARITY "))


# --- the ttl grammar ---------------------------------------------------------------------------------------

def _python_ttl(text) -> int | None:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError:
        return None


@pytest.mark.parametrize("i", range(len(TTL_CASES)), ids=[repr(c) for c in TTL_CASES])
def test_ttl_grammar(jinja, i):
    """Accepted with the same number of seconds, or rejected, by both (parse_duration raises ValueError)."""
    assert jinja["ttl"][i] == _python_ttl(TTL_CASES[i]), TTL_CASES[i]


def test_ttl_grammar_long_s(jinja):
    """'ſ' folds to 's' under Unicode case rules: both sides use ASCII rules and reject it."""
    assert _python_ttl("30ſ") is None


def test_ttl_grammar_has_accepted_and_rejected_cases(jinja):
    assert 15 < sum(v is not None for v in jinja["ttl"]) < len(TTL_CASES) - 15


# --- output column names -----------------------------------------------------------------------------------

def _python_names(views: list[dict]) -> dict:
    features = [Feature(v["name"], f, types.FLOAT) for v in views for f in v["features"]]
    join_keys = [k for v in views for k in v["keys"]]
    try:
        flat = output_names(features, reserved=join_keys)
    except ValidationError as exc:
        return {"names": None, "error": exc.problems[0]}
    names, i = [], 0
    for v in views:
        names.append(flat[i:i + len(v["features"])])
        i += len(v["features"])
    return {"names": names, "error": None}


@pytest.mark.parametrize("i", range(len(NAME_CASES)))
def test_output_names(jinja, i):
    """The same names, or the same refusal (the same message), online and in training sets."""
    assert jinja["names"][i] == _python_names(NAME_CASES[i])


def test_output_names_cover_prefixes_and_refusals(jinja):
    assert jinja["names"][1]["names"] == [["a__x", "y"], ["b__X", "z"]]
    assert jinja["names"][2]["names"] == [["a__merchant_id", "spend"], ["risk"]]
    assert [r["error"] is not None for r in jinja["names"]] == [False, False, False, False, True, True, False]


# --- which columns are features ----------------------------------------------------------------------------

FEATURES_YML = "version: 1\n"
VARS = {"featuremart_entities": {"customer": {"join_keys": {"customer_id": "string"}},
                                 "merchant": {"join_keys": {"merchant_id": "string"}}},
        "featuremart_default_ttl": "30d"}


def _python_features(tmp_path: Path, entity, meta, column_meta, columns) -> list[str]:
    """The registry's features of a model with this metadata and these warehouse columns."""
    case = _feature_case(entity, meta, column_meta, columns)
    node = {"resource_type": "model", "unique_id": "model.p.v", "name": "v", "package_name": "p",
            "original_file_path": "models/v.sql", "patch_path": "p://models/v.yml", "database": "db",
            "schema": "main", "alias": "v", "config": {"materialized": "table", "meta": {"featuremart": case["meta"]}},
            "columns": case["node_columns"], "depends_on": {"nodes": []}}
    (tmp_path / "manifest.json").write_text(json.dumps({
        "metadata": {"dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v12.json",
                     "dbt_version": "1.11.0", "adapter_type": "duckdb"},
        "nodes": {"model.p.v": node}, "exposures": {}, "sources": {}}))
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    warehouse_columns = {Relation("db", "main", "v"): {c: COLUMN_TYPES.get(c.lower(), "DOUBLE") for c in columns}}
    registry = build_registry(load_manifest(tmp_path), load_features_yml(tmp_path, VARS), warehouse_columns)
    return [f.name for f in registry.view("v").features]


@pytest.mark.parametrize("i", range(len(FEATURE_CASES)))
def test_feature_columns(jinja, tmp_path, i):
    """`view.*` in a training set takes exactly the features the registry serves online (no changed_at, no
    keys, no timestamp, no `feature: false` columns, whatever their case)."""
    assert jinja["features"][i] == _python_features(tmp_path, *FEATURE_CASES[i])


def test_feature_columns_leave_out_changed_at(jinja):
    assert jinja["features"][1] == ["spend", "n"]
    assert jinja["features"][2] == ["spend", "extra"]


# --- the Redis key format and value encoding ----------------------------------------------------------------

KEY_VALUES = ["C1", "", " ", "%", "%25", "%2C", ",", "=", "{", "}", "a,b=c{d}%", "{customer_id=C1}", "é", "🎉",
              "x:y", "new\nline", "tab\t", "quote\"'", "back\\slash", "\x01", "ＡＢＣ"]
INT_KEYS = [0, -1, 2**63 - 1, -(2**63), 42]
UTC = timezone.utc
VALUE_COLUMNS = [  # (column, warehouse type, logical type, values: cycled over the rows)
    ("s", "VARCHAR", types.STRING, ["plain", "", None, "é🎉", 'q"\\', "line\nbreak\t\x01", "\u2028", "%2C{}="]),
    ("i", "BIGINT", types.INT, [0, -1, 2**63 - 1, -(2**63), None, 7]),
    ("f", "DOUBLE", types.FLOAT, [0.1, -0.0, 1e300, 5e-324, 1 / 3, None, -2.5, 3.0, float("nan"), float("inf")]),
    ("b", "BOOLEAN", types.BOOL, [True, False, None]),
    ("t", "TIMESTAMP", types.TIMESTAMP, [datetime(2024, 3, 10, 23, 59, 59, 999999), datetime(1970, 1, 1),
                                         datetime(1900, 1, 1, 0, 0, 0, 1), None]),
    ("tz", "TIMESTAMPTZ", types.TIMESTAMP, [datetime(2024, 3, 10, 23, 59, 59, 1, tzinfo=UTC),
                                            datetime(2024, 11, 3, 1, 30, tzinfo=timezone(timedelta(hours=-4))),
                                            None]),
    ("d", "DATE", types.DATE, [date(2024, 2, 29), date(1, 1, 1), date(9999, 12, 31), None]),
    ("af", "DOUBLE[]", types.ARRAY_FLOAT, [[0.25, -1.5, None], [], None, [1e300, 5e-324, 0.1]]),
    ("ai", "BIGINT[]", types.ARRAY_INT, [[1, None, -(2**63)], [], None]),
    ("as_", "VARCHAR[]", types.ARRAY_STRING, [["a", "é", "", None, 'q"', "\n"], [], None]),
]


def _same(got, want) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, float):
        return isinstance(got, float) and got == want and math.copysign(1, got) == math.copysign(1, want)
    if isinstance(want, datetime):
        return isinstance(got, datetime) and got == (want if want.tzinfo else want.replace(tzinfo=UTC))
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    return type(got) is type(want) and got == want


def _rows() -> list[tuple]:
    rows = []
    for r, key in enumerate(KEY_VALUES):
        values = [vs[r % len(vs)] for _, _, _, vs in VALUE_COLUMNS]
        rows.append((key, INT_KEYS[r % len(INT_KEYS)], datetime(2024, 6, 1) + timedelta(seconds=r), *values))
    return rows


_VIEW = FeatureView(
    name="parity_view", entities=("customer", "merchant"), join_keys=(("k", "string"), ("n", "int")),
    timestamp="event_ts", ttl=timedelta(days=30),
    features=tuple(Feature("parity_view", c, logical, "", t) for c, t, logical, _ in VALUE_COLUMNS),
    relation=Relation(None, "", "parity_values"))


def _check_written(rows: list[tuple], written: dict[str, tuple[str, int]]) -> list[tuple]:
    """Every row's key is the one Python builds and its value decodes to the row's values; returns the
    (key, column, got, want) that differ."""
    decoder = RowDecoder([f.dtype for f in _VIEW.features])
    assert len(written) == len(rows)
    wrong = []
    for key, n, event_ts, *values in rows:
        expected_key = keys.row_key("fm", _VIEW.name, _VIEW.version, [("k", key), ("n", n)])
        assert expected_key in written, (key, n, expected_key, sorted(written)[:3])
        value, ts_us = written[expected_key]
        decoded = decoder.decode(value.encode())
        assert decoded[0] == ts_us == sql.to_us(event_ts)
        # NaN and ±Infinity are served as null: JSON has no such numbers (docs/redis-format.md).
        served = [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
        wrong += [(key, column, got, want) for (column, _, _, _), got, want in zip(VALUE_COLUMNS, decoded[1:], served)
                  if not _same(got, want)]
    return wrong


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Pacific/Chatham"])
def test_redis_keys_and_values(zone):
    """The keys and values SQL writes (DuckDB) are the keys Python builds and decode to the values the
    warehouse held, for adversarial key values and every type (nulls, unicode, extreme numbers, arrays,
    timestamps), in any session time zone."""
    import duckdb

    rows = _rows()
    con = duckdb.connect()
    con.execute(f"set TimeZone = '{zone}'")
    columns = ", ".join(f'"{c}" {t}' for c, t, _, _ in VALUE_COLUMNS)
    con.execute(f"create table parity_values (k varchar, n bigint, event_ts timestamp, {columns})")
    con.executemany(f"insert into parity_values values ({', '.join(['?'] * (3 + len(VALUE_COLUMNS)))})", rows)
    query = sql.render(sql.online_payload(_VIEW, "fm", datetime(2024, 6, 2), "duckdb"), "duckdb")
    written = {key: (value, ts_us) for key, value, ts_us in con.sql(query).fetchall()}
    con.close()
    assert _check_written(rows, written) == []


_PG_TYPES = {"VARCHAR": "text", "BIGINT": "bigint", "DOUBLE": "double precision", "BOOLEAN": "boolean",
             "TIMESTAMP": "timestamp", "TIMESTAMPTZ": "timestamptz", "DATE": "date",
             "DOUBLE[]": "double precision[]", "BIGINT[]": "bigint[]", "VARCHAR[]": "text[]"}


def _postgres_differences(dsn: str, zone: str) -> list[tuple]:
    """Write the rows in PostgreSQL, run the sync's payload query with the session in `zone`, and return what
    decodes differently (see _check_written)."""
    import uuid

    import psycopg2

    rows = _rows()
    schema = f"fm_parity_{uuid.uuid4().hex[:8]}"
    con = psycopg2.connect(dsn)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(f"create schema {schema}; set search_path to {schema}; set time zone '{zone}'")
            columns = ", ".join(f'"{c}" {_PG_TYPES[t]}' for c, t, _, _ in VALUE_COLUMNS)
            cur.execute(f"create table parity_values (k text, n bigint, event_ts timestamp, {columns})")
            # psycopg2 sends -0.0 as the literal -0.0, which PostgreSQL reads as minus (numeric 0): text keeps the sign
            cur.executemany(f"insert into parity_values values ({', '.join(['%s'] * (3 + len(VALUE_COLUMNS)))})",
                            [[str(v) if _float_edge(v) else v for v in row] for row in rows])
            cur.execute(sql.render(sql.online_payload(_VIEW, "fm", datetime(2024, 6, 2), "postgres"), "postgres"))
            written = {key: (value, ts_us) for key, value, ts_us in cur.fetchall()}
    finally:
        with con.cursor() as cur:
            cur.execute(f"drop schema if exists {schema} cascade")
        con.close()
    return _check_written(rows, written)


def _float_edge(value) -> bool:
    return isinstance(value, float) and value == 0 and math.copysign(1, value) < 0


@pytest.mark.postgres
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Pacific/Chatham"])
def test_redis_keys_and_values_on_postgres(postgres_dsn, zone):
    """The same on PostgreSQL (json_build_array), with the session in `zone`: every key and value, negative zero
    included (PostgreSQL's JSON writes -0.0 as the integer -0; the payload writes -0.0)."""
    assert _postgres_differences(postgres_dsn, zone) == []
