"""Feature statistics and drift (featuremart.monitoring): each figure against numpy/scipy on the same data and on
small hand-computed cases; the sync's history in Redis; `featuremart stats`; DuckDB and Postgres."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
import time
from collections import Counter
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from featuremart import FeatureStore, sql
from featuremart.cli import main
from featuremart.config import DriftThresholds, load_features_yml
from featuremart.durable import StatsHistory
from featuremart.errors import ConfigError, ConfigProblems, OnlineStoreError
from featuremart.monitoring import drift, metrics, stats
from featuremart.registry import Feature, FeatureView, Relation
from featuremart.warehouse import DuckDBWarehouse

NOW = datetime(2026, 3, 1)
N = 4000


# ---- drift arithmetic: hand-computed ---------------------------------------------------------------------------

def test_psi_hand_computed():
    # shares 0.5/0.5 -> 0.25/0.75: (0.25-0.5)ln(0.25/0.5) + (0.75-0.5)ln(0.75/0.5)
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert drift.psi([10, 10], [3, 3]) == 0.0
    # an empty bin counts as EPSILON: shares 1/0 -> 0.5/0.5
    eps = drift.EPSILON
    assert drift.psi([10, 0], [5, 5]) == pytest.approx((0.5 - 1) * math.log(0.5) + (0.5 - eps) * math.log(0.5 / eps))
    assert drift.psi([0, 0], [1, 2]) is None and drift.psi([1], [0]) is None


def test_ks_hand_computed():
    assert drift.ks([1, 1, 0], [0, 1, 1]) == pytest.approx(0.5)
    assert drift.ks([2, 2], [1, 1]) == 0.0
    assert drift.ks([0, 0], [1, 1]) is None


def test_levels_follow_thresholds():
    t = DriftThresholds()
    assert (t.psi_warn, t.psi_error) == (0.1, 0.25)
    assert drift.level(0.05, 0.05, t) == "ok"
    assert drift.level(0.1, None, t) == "warn"
    assert drift.level(0.3, 0.0, t) == "error"
    assert drift.level(0.0, 0.15, t) == "warn"  # the worse of the two
    assert drift.level(None, None, t) == "n/a"
    assert drift.level(0.2, None, DriftThresholds(psi_warn=0.3, psi_error=0.5)) == "ok"


def _features_yml(tmp_path, tiers: str):
    (tmp_path / "features.yml").write_text(f"version: 1\ntiers:\n{tiers}")
    return load_features_yml(tmp_path, {"featuremart_entities": {"c": {"join_keys": {"id": "int"}}}})


def test_tier_thresholds_from_features_yml(tmp_path):
    config = _features_yml(tmp_path, "  gold:\n    drift: {psi: {warn: 0.05, error: 0.1}}\n  silver: {}\n")
    assert config.tiers["gold"].drift == DriftThresholds(0.05, 0.1, 0.1, 0.2)  # ks keeps its defaults
    assert config.tiers["silver"].drift == DriftThresholds()


@pytest.mark.parametrize("block, message", [
    ("{psi: {warn: 0.3, error: 0.2}}", "features.yml: tiers.gold.drift.psi: warn (0.3) is above error (0.2)"),
    ("{ks: {warn: -1, error: 0.2}}", "features.yml: tiers.gold.drift.ks.warn: must be greater than 0"),
    ("{psi: {warn: 0.1}}", "features.yml: tiers.gold.drift.psi.error"),
    ("{kl: {warn: 0.1, error: 0.2}}", "features.yml: tiers.gold.drift.kl: unknown key"),
])
def test_invalid_threshold_is_one_line(tmp_path, block, message):
    with pytest.raises(ConfigProblems) as caught:
        _features_yml(tmp_path, f"  gold:\n    drift: {block}\n")
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(message), caught.value.problems


def test_stats_switch(monkeypatch):
    assert stats.stats_enabled({}) and stats.stats_enabled({"FEATUREMART_STATS": "on"})
    assert not stats.stats_enabled({"FEATUREMART_STATS": "off"})
    with pytest.raises(ConfigError, match="FEATUREMART_STATS='maybe'"):
        stats.stats_enabled({"FEATUREMART_STATS": "maybe"})


# ---- statistics computed by DuckDB, against numpy ------------------------------------------------------------

def _data(seed: int, shift: float = 0.0, n: int = N) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(10 + shift, 2, n)
    x[rng.random(n) < 0.05] = np.nan  # NaN: served as null, counted as null
    nulls = rng.random(n) < 0.1
    words = np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"])
    c = words[np.minimum(rng.geometric(0.3, n) - 1, len(words) - 1)].astype(object)
    c[rng.random(n) < 0.07] = None
    arrays = [None if rng.random() < 0.05 else list(rng.normal(0, 1, rng.integers(0, 6))) for _ in range(n)]
    return {"id": np.arange(n), "ts": [NOW - timedelta(hours=int(h)) for h in rng.integers(1, 500, n)],
            "x": pa.array(x, mask=nulls), "n": rng.integers(0, 20, n), "c": list(c),
            "b": pa.array(rng.random(n) < 0.3, mask=rng.random(n) < 0.02), "k": np.full(n, 7.0),
            "a": pa.array(arrays, pa.list_(pa.float64())),
            "t": [NOW - timedelta(days=int(d)) for d in rng.integers(0, 100, n)]}


FEATURES = (("x", "float"), ("n", "int"), ("c", "string"), ("b", "bool"), ("k", "float"), ("a", "array<float>"),
            ("t", "timestamp"))


def _view(table: str) -> FeatureView:
    return FeatureView(table, ("c",), (("id", "int"),), "ts", timedelta(days=30),
                       tuple(Feature(table, name, dtype) for name, dtype in FEATURES), Relation(None, "main", table))


@pytest.fixture
def duck(tmp_path):
    """A DuckDB file with `base` (seed 1), `same` (seed 2, same distributions) and `moved` (x shifted by 2σ, with
    values beyond base's range)."""
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    tables = {"base": _data(1), "same": _data(2), "moved": _data(3, shift=4.0)}
    for name, data in tables.items():
        frame = pa.table(data)
        con.register("frame", frame)
        con.execute(f"create table {name} as select * from frame")
        con.unregister("frame")
    con.close()
    wh = DuckDBWarehouse(path)
    yield wh, tables
    wh.close()


def _profile(wh, view, reference=None, now=NOW):
    query = stats.view_profile_query(view, now, wh.dialect, reference)
    return stats.read_profile(wh.query(sql.render(query, wh.dialect)).to_pylist()[0], view.features, reference)


def _numbers(values) -> np.ndarray:
    """The non-null, finite values of a column: what featuremart serves as a number."""
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _check_number(s, raw, n_rows, approximate_quantiles):
    values = _numbers(raw)
    assert s["count"] == len(values) and s["nulls"] == n_rows - len(values)
    assert s["null_fraction"] == pytest.approx((n_rows - len(values)) / n_rows)
    assert s["min"] == pytest.approx(values.min()) and s["max"] == pytest.approx(values.max())
    assert s["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert s["stddev"] == pytest.approx(values.std(), rel=1e-9, abs=1e-9)  # population stddev (ddof=0)
    spread = values.max() - values.min()
    for name, q in stats.QUANTILES.items():
        got = s["quantiles"][name]
        if approximate_quantiles:  # DuckDB's t-digest: the value's rank is within 1% of the quantile's
            assert np.mean(values < got) <= q + 0.01 and np.mean(values <= got) >= q - 0.01, (name, got)
        else:  # Postgres: exact, numpy's default (linear) interpolation
            assert got == pytest.approx(np.quantile(values, q), rel=1e-9, abs=1e-9), name
    counts = [len(values)] + [0] * (stats.BINS - 1) if spread == 0 else list(
        np.histogram(values, bins=stats.BINS, range=(values.min(), values.max()))[0])
    assert s["histogram"]["counts"] == counts
    assert (s["histogram"]["lo"], s["histogram"]["hi"]) == pytest.approx((values.min(), values.max()))


def _check_all(profile, data, approximate_quantiles):
    rows = len(data["id"])
    assert profile["rows"] == rows
    f = profile["features"]
    _check_number(f["x"], data["x"].to_pylist(), rows, approximate_quantiles)
    _check_number(f["n"], data["n"], rows, approximate_quantiles)
    _check_number(f["k"], data["k"], rows, approximate_quantiles)  # a constant column
    _check_number(f["t"], [(t - datetime(1970, 1, 1)).total_seconds() for t in data["t"]], rows,
                  approximate_quantiles)
    c = Counter(v for v in data["c"] if v is not None)
    assert f["c"]["count"] == sum(c.values()) and f["c"]["distinct"] == len(c)
    assert f["c"]["top"] == [[v, n] for v, n in sorted(c.items(), key=lambda i: (-i[1], i[0]))[:stats.TOP_VALUES]]
    b = Counter(str(v).lower() for v in data["b"].to_pylist() if v is not None)
    assert f["b"]["top"] == [[v, n] for v, n in sorted(b.items(), key=lambda i: (-i[1], i[0]))]
    arrays = [a for a in data["a"].to_pylist() if a is not None]
    lengths = np.array([len(a) for a in arrays])
    norms = np.array([np.sqrt(np.sum(np.square(a))) for a in arrays])
    assert f["a"]["count"] == len(arrays) and f["a"]["nulls"] == rows - len(arrays)
    assert [f["a"]["length"][k] for k in ("min", "mean", "max")] == pytest.approx(
        [lengths.min(), lengths.mean(), lengths.max()])
    assert [f["a"]["norm"][k] for k in ("min", "mean", "max")] == pytest.approx(
        [norms.min(), norms.mean(), norms.max()])


@pytest.fixture(params=["UTC", "America/Los_Angeles", "Asia/Kolkata"])
def tz(request, monkeypatch):
    """The process's TZ set to each of three zones (and restored after): results must not depend on it."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_statistics_match_numpy(duck, tz):
    wh, tables = duck
    _check_all(_profile(wh, _view("base")), tables["base"], approximate_quantiles=True)


def test_small_hand_computed_case(tmp_path):
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    con.execute("create table s as select * from (values (1, 1.0, 'u'), (2, 2.0, 'u'), (3, 3.0, 'v'), (4, 4.0, "
                "null), (5, null, 'u')) v(id, x, c)")
    con.execute("alter table s add column ts timestamp default timestamp '2026-02-28 00:00:00'")
    con.close()
    view = FeatureView("s", ("c",), (("id", "int"),), "ts", timedelta(days=30),
                       (Feature("s", "x", "float"), Feature("s", "c", "string")), Relation(None, "main", "s"))
    with DuckDBWarehouse(tmp_path / "s.duckdb") as wh:
        p = _profile(wh, view)
        x, c = p["features"]["x"], p["features"]["c"]
        assert (p["rows"], x["count"], x["nulls"], x["null_fraction"]) == (5, 4, 1, 0.2)
        assert (x["min"], x["max"], x["mean"]) == (1.0, 4.0, 2.5)
        assert x["stddev"] == pytest.approx(math.sqrt(1.25))  # ((1.5² + 0.5²) · 2) / 4
        # width 0.3 over [1, 4]: 1 -> bin 0, 2 -> floor(3.33) = 3, 3 -> floor(6.67) = 6, 4 -> the last bin
        assert x["histogram"]["counts"] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
        assert (c["count"], c["distinct"], c["top"]) == (4, 2, [["u", 3], ["v", 1]])
        # Compared with itself: no drift; the reference bins are below, 10 bins, above (nulls apart).
        again = _profile(wh, view, p["features"])
        assert again["features"]["x"]["reference_counts"] == [0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
        assert again["features"]["c"]["reference_counts"] == [3, 1]
        for name in ("x", "c"):
            d = drift.compare(p["features"][name], again["features"][name], DriftThresholds())
            assert (d.psi, d.level) == (0.0, "ok") and d.ks in (0.0, None)


def test_large_views_are_profiled_on_a_fixed_entity_sample(duck, monkeypatch):
    monkeypatch.setattr(stats, "SAMPLE_ENTITIES", 1000)
    assert stats.sample_buckets(None) is None and stats.sample_buckets(1000) is None
    buckets = stats.sample_buckets(N)
    assert buckets == 256  # ceil(1024 * 1000 / 4000)
    wh, tables = duck
    view = _view("base")
    sampled = stats.read_profile(wh.query(sql.render(
        stats.view_profile_query(view, NOW, "duckdb", sample=buckets), "duckdb")).to_pylist()[0], view.features)
    ids = {r[0] for r in wh.con.execute("select id from base where (hash(id) & 1023) < ?", [buckets]).fetchall()}
    assert 800 < len(ids) < 1200 and sampled["rows"] == len(ids)
    subset = {name: (data.take(sorted(ids)) if isinstance(data, pa.Array) else
                     [data[i] for i in sorted(ids)]) for name, data in tables["base"].items()}
    subset["id"] = np.array(sorted(ids))
    _check_all(sampled, subset, approximate_quantiles=True)
    again = stats.read_profile(wh.query(sql.render(stats.view_profile_query(view, NOW, "duckdb", sampled["features"],
                               sample=buckets), "duckdb")).to_pylist()[0], view.features, sampled["features"])
    assert {n: drift.compare(sampled["features"][n], again["features"][n], DriftThresholds()).psi
            for n in ("x", "c")} == {"x": 0.0, "c": 0.0}  # the same entities every run


def test_zero_rows_profile_and_drift_are_na(duck):
    wh, _ = duck
    empty = _profile(wh, _view("base"), now=datetime(2000, 1, 1))  # nothing dated before 2000
    x = empty["features"]["x"]
    assert empty["rows"] == 0 and x["count"] == 0 and x["null_fraction"] is None and x["histogram"] is None
    assert all(v is None for v in x["quantiles"].values()) and empty["features"]["c"]["top"] == []
    base = _profile(wh, _view("base"))
    for name in ("x", "c"):  # against an empty reference, and an empty profile against a full one
        assert drift.compare(empty["features"][name], base["features"][name], DriftThresholds()).level == "n/a"
    on_base = _profile(wh, _view("base"), base["features"], now=datetime(2000, 1, 1))
    assert drift.compare(base["features"]["x"], on_base["features"]["x"], DriftThresholds()).level == "n/a"


def _independent_bins(reference: np.ndarray, current: np.ndarray, current_nulls: int, reference_nulls: int):
    """Both sides' counts on the reference's bins, by numpy: below, 10 equal bins over [lo, hi], above, nulls."""
    lo, hi = reference.min(), reference.max()
    inner = np.histogram(current[(current >= lo) & (current <= hi)], bins=stats.BINS, range=(lo, hi))[0]
    actual = [int((current < lo).sum()), *inner, int((current > hi).sum()), current_nulls]
    expected = [0, *np.histogram(reference, bins=stats.BINS, range=(lo, hi))[0], 0, reference_nulls]
    return expected, actual


def test_drift_matches_numpy_and_scipy(duck):
    from scipy.stats import ks_2samp

    wh, tables = duck
    base = _profile(wh, _view("base"))
    for other, drifted in (("same", False), ("moved", True)):
        current = _profile(wh, _view(other), base["features"])
        d = drift.compare(base["features"]["x"], current["features"]["x"], DriftThresholds())
        ref, cur = _numbers(tables["base"]["x"].to_pylist()), _numbers(tables[other]["x"].to_pylist())
        expected, actual = _independent_bins(ref, cur, N - len(cur), N - len(ref))
        p, q = np.maximum(np.array(expected) / N, drift.EPSILON), np.maximum(np.array(actual) / N, drift.EPSILON)
        assert d.psi == pytest.approx(float(np.sum((q - p) * np.log(q / p))), abs=1e-6)
        # KS at the bins' edges, from the raw values (numpy), and the exact two-sample KS (scipy) above it
        edges = np.linspace(ref.min(), ref.max(), stats.BINS + 1)
        binned = max(abs(np.mean(ref < e) - np.mean(cur < e)) for e in edges[:-1])
        binned = max(binned, abs(np.mean(ref <= edges[-1]) - np.mean(cur <= edges[-1])))
        assert d.ks == pytest.approx(binned, abs=1e-6)
        exact = ks_2samp(ref, cur).statistic
        assert d.ks <= exact + 1e-9 and exact - d.ks < 0.06
        assert d.level == ("error" if drifted else "ok"), (other, d)
        if drifted:  # values beyond base's max land in the open-ended bin above it
            assert current["features"]["x"]["reference_counts"][-1] == int((cur > ref.max()).sum()) > 0
        # unchanged distributions stay ok, whatever moved elsewhere
        for name in ("n", "c", "b"):
            same = drift.compare(base["features"][name], current["features"][name], DriftThresholds())
            assert same.level == "ok", (name, same)


def test_constant_column_bins(duck):
    """A constant reference has three bins (below, equal, above); values off the constant are drift."""
    wh, tables = duck
    base = _profile(wh, _view("base"))
    assert base["features"]["k"]["histogram"] == {"lo": 7.0, "hi": 7.0, "counts": [N] + [0] * (stats.BINS - 1)}
    on_itself = _profile(wh, _view("same"), base["features"])
    assert on_itself["features"]["k"]["reference_counts"] == [0, N] + [0] * stats.BINS
    assert drift.compare(base["features"]["k"], on_itself["features"]["k"], DriftThresholds()).psi == 0.0
    wh.close()
    con = duckdb.connect(str(wh.path))
    con.execute("update moved set k = case when id % 2 = 0 then 6.0 else 9.0 end where id < 1000")
    con.close()
    moved = _profile(wh, _view("moved"), base["features"])["features"]["k"]
    assert moved["reference_counts"] == [500, N - 1000] + [0] * (stats.BINS - 1) + [500]
    d = drift.compare(base["features"]["k"], moved, DriftThresholds())
    assert d.ks == pytest.approx(0.125) and d.level == "error"  # 500 of 4000 below 7: the CDFs part by 1/8


# ---- the sync, the history and `featuremart stats` on the reference project ---------------------------------

def _cli(project, *args):
    out = io.StringIO()
    code = main(["stats", *args, "--project-dir", str(project), "--profiles-dir", str(project)],
                console=Console(file=out, width=200))
    return code, out.getvalue()


@pytest.fixture
def synced(project, redis_url, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    monkeypatch.delenv("FEATUREMART_STATS", raising=False)
    return project


def _history(project, view="customer_spend"):
    with FeatureStore(project) as fs:
        return StatsHistory(fs.online).read(view)


@pytest.mark.integration
def test_sync_records_statistics_of_what_it_publishes(synced):
    with FeatureStore(synced) as fs:
        assert fs.sync().status == "success"
        con = duckdb.connect(str(synced / "target" / "featuremart.duckdb"), read_only=True)
        view = fs.registry.view("customer_spend")
        latest = sql.render(sql.latest_rows(view, datetime.utcnow(), "duckdb"), "duckdb")
        published = con.sql(latest).fetchnumpy()
        con.close()
    [record] = _history(synced)
    assert record["rows"] == len(published["customer_id"]) > 0
    spend = _numbers(published["spend_7d"])
    s = record["features"]["spend_7d"]
    assert (s["count"], s["mean"]) == (len(spend), pytest.approx(spend.mean()))
    assert s["histogram"]["counts"] == list(np.histogram(spend, bins=stats.BINS, range=(spend.min(), spend.max()))[0])
    # the first publish has nothing to compare with: n/a, documented
    assert set(drift.record_drift(record, DriftThresholds()).values()) == {drift.Drift(None, None, "n/a")}
    code, out = _cli(synced, "customer_spend", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["features"]["spend_7d"]["latest"] == s and shown["run_id"] == record["run_id"]
    assert shown["features"]["spend_7d"]["history"][0]["level"] == "n/a"


def sync_with_planted_drift(project, scale: float, shift: float) -> None:
    """Sync, move customer_spend.spend_7d to `spend_7d * scale + shift` in the warehouse, sync again."""
    with FeatureStore(project) as fs:
        assert fs.sync().status == "success"
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"))
    con.execute("update main.customer_spend set spend_7d = spend_7d * ? + ?", [scale, shift])
    con.close()
    with FeatureStore(project) as fs:
        assert fs.sync().status == "success"


@pytest.mark.integration
def test_planted_drift_is_named_and_survives_a_fresh_runner(synced, monkeypatch):
    sync_with_planted_drift(synced, 5, 2000)
    shutil.rmtree(synced / "target" / "featuremart")  # a fresh runner: only Redis remembers
    with FeatureStore(synced) as fs:
        found = drift.latest_drift(fs.online, fs.registry.views.values(), fs.config.tiers)
    spend = found["customer_spend"]
    assert spend["spend_7d"].level == "error" and spend["spend_7d"].psi > 1 and spend["spend_7d"].ks > 0.9
    assert {n for n, d in spend.items() if d.level != "ok"} == {"spend_7d"}, spend
    assert all(d.level == "ok" for v, fs_ in found.items() if v != "customer_spend" for d in fs_.values()
               if d.level != "n/a")
    code, out = _cli(synced, "customer_spend.spend_7d")
    assert code == 0
    assert "customer_spend.spend_7d over the last 2 run(s)" in out and "error" in out
    # status folds the drift in: the view and every service reading it at error, exit 4; /metrics has the figures
    out = io.StringIO()
    code = main(["status", "--json", "--project-dir", str(synced), "--profiles-dir", str(synced)],
                console=Console(file=out, width=200))
    rows = {r["name"]: r for r in json.loads(out.getvalue())["rows"]}
    assert code == 4
    assert rows["customer_spend"]["drift"]["status"] == "error" and "spend_7d" in rows["customer_spend"]["drift"]["detail"]
    assert rows["customer_spend"]["drift"]["features"]["spend_7d"]["psi"] == pytest.approx(spend["spend_7d"].psi)
    readers = {name for name, r in rows.items() if r["kind"] == "service" and "customer_spend" in r["views"]}
    assert readers and all(rows[n]["drift"]["status"] == "error" for n in readers)
    assert all(r["drift"]["status"] != "error" for n, r in rows.items()
               if n != "customer_spend" and n not in readers)
    with FeatureStore(synced) as fs:
        text = metrics.render(*metrics.read_record(fs.online))
    psi_line = next(line for line in text.splitlines()
                    if line.startswith('featuremart_feature_drift_psi{view="customer_spend",feature="spend_7d"}'))
    assert float(psi_line.split()[-1]) == pytest.approx(spend["spend_7d"].psi, rel=1e-5)


@pytest.mark.integration
def test_history_is_bounded(synced, monkeypatch):
    import featuremart.durable

    monkeypatch.setattr(featuremart.durable, "STATS_KEPT", 2)
    with FeatureStore(synced) as fs:
        runs = [fs.sync(select=["customer_spend"]).run_id for _ in range(3)]
    assert [r["run_id"] for r in _history(synced)] == runs[:0:-1]


@pytest.mark.integration
def test_failed_sync_stores_no_statistics(synced, monkeypatch):
    from featuremart.online.store import OnlineStore

    with FeatureStore(synced) as fs:
        assert fs.sync(select=["customer_spend"]).status == "success"

    def refuse(*args, **kwargs):
        raise OnlineStoreError("injected: the registry could not be published")

    monkeypatch.setattr(OnlineStore, "publish_registry", refuse)
    with FeatureStore(synced) as fs:
        run = fs.sync(select=["customer_spend"])
    assert run.status == "failed" and "injected" in run.error
    assert len(_history(synced)) == 1


@pytest.mark.integration
def test_statistics_run_beside_the_sync_never_sharing_the_warehouse_and_a_failure_only_notes(synced, monkeypatch):
    """The statistics query runs in a thread beside the writes and the durable upload: a slow one never overlaps
    another use of the warehouse connection (the next view's read waits for it), one that fails leaves the
    publish whole with a note, and a successful one is in the history once the run returned."""
    active, overlaps, profiled = [0], [], []
    real_stream, real_profile = DuckDBWarehouse.stream, stats.profile_view

    def stream(self, query, *args, **kwargs):
        active[0] += 1
        overlaps.append(active[0])
        try:
            if threading.current_thread().name.startswith("featuremart-stats"):
                time.sleep(0.5)  # a slow statistics query: the sync goes on meanwhile, the next read must wait
            yield from real_stream(self, query, *args, **kwargs)
        finally:
            active[0] -= 1

    def failing_profile(warehouse, history, view, now, entities=None):
        if view.name == "customer_spend":
            raise duckdb.IOException("injected: the statistics query failed")
        record = real_profile(warehouse, history, view, now, entities)
        profiled.append(view.name)
        return record

    monkeypatch.setattr(DuckDBWarehouse, "stream", stream)
    monkeypatch.setattr(stats, "profile_view", failing_profile)
    with FeatureStore(synced) as fs:
        run = fs.sync()
        online = [v.view for v in run.views if v.status == "synced"]
        assert run.status == "success" and len(online) >= 2 and "customer_spend" in online, run
        assert overlaps and max(overlaps) == 1, "the warehouse connection was used by two threads at once"
        assert any("customer_spend: statistics not computed this run (IOException: injected" in n for n in run.notes)
        assert sorted(profiled) == sorted(set(online) - {"customer_spend"})  # joined before the run returned
        for name in profiled:
            assert _history(synced, name)[0]["run_id"] == run.run_id
        assert _history(synced, "customer_spend") == []
        # every value of the view whose statistics failed was published: read back from Redis
        view = fs.registry.view("customer_spend")
        con = duckdb.connect(str(synced / "target" / "featuremart.duckdb"), read_only=True)
        latest = con.sql(sql.render(sql.latest_rows(view, datetime.utcnow(), "duckdb"), "duckdb")).fetchall()
        names = [c for c in con.sql(sql.render(sql.latest_rows(view, datetime.utcnow(), "duckdb"), "duckdb")).columns]
        con.close()
        rows = [dict(zip(names, row)) for row in latest]
        feature = view.features[0].name
        read = fs.get_online_features([{k: r[k] for k in view.key_names} for r in rows],
                                      features=[f"customer_spend.{feature}"])
        assert rows and [(v[feature].status, v[feature].value) for v in read] == [
            ("present", pytest.approx(r[feature])) for r in rows]


@pytest.mark.integration
def test_statistics_off(synced, monkeypatch):
    monkeypatch.setenv("FEATUREMART_STATS", "off")
    with FeatureStore(synced) as fs:
        assert fs.sync(select=["customer_spend"]).status == "success"
    assert _history(synced) == []
    code, out = _cli(synced, "customer_spend")
    assert code == 1 and "no statistics recorded for view customer_spend yet" in out and len(out.splitlines()) == 1


@pytest.mark.integration
def test_baselines_and_bad_input(synced, tmp_path, monkeypatch):
    with FeatureStore(synced) as fs:
        assert fs.sync().status == "success"
        client = fs.online._redis
    before = {k: client.dump(k) for k in client.keys("*")}
    # a Parquet training set holding the published values of two features: no drift; shifted: drift
    with FeatureStore(synced) as fs:
        view = fs.registry.view("customer_spend")
        con = duckdb.connect(str(synced / "target" / "featuremart.duckdb"), read_only=True)
        published = con.sql(sql.render(sql.latest_rows(view, datetime.utcnow(), "duckdb"), "duckdb")).to_arrow_table()
        con.close()
    same = pa.table({"customer_spend__spend_7d": published["spend_7d"], "txn_count_7d": published["txn_count_7d"],
                     "label": pa.array([1] * published.num_rows)})
    pq.write_table(same, tmp_path / "same.parquet")
    code, out = _cli(synced, "customer_spend", "--baseline", str(tmp_path / "same.parquet"), "--json")
    result = json.loads(out)["baseline"]
    assert code == 0 and result["rows"] == published.num_rows
    assert result["drift"]["spend_7d"] == {"psi": 0.0, "ks": 0.0, "level": "ok"}
    assert result["drift"]["txn_count_7d"]["level"] == "ok"
    assert result["drift"]["spend_1d"]["level"] == "n/a"  # not in the baseline: documented n/a
    shifted = same.set_column(0, "customer_spend__spend_7d", pa.compute.add(published["spend_7d"], 500.0))
    pq.write_table(shifted, tmp_path / "shifted.parquet")
    code, out = _cli(synced, "customer_spend.spend_7d", "--baseline", str(tmp_path / "shifted.parquet"), "--json")
    assert code == 0 and json.loads(out)["baseline"]["drift"]["spend_7d"]["level"] == "error"
    # a dbt model (the training set holds spend_7d) and a date range of the view's own history
    code, out = _cli(synced, "customer_spend.spend_7d", "--baseline", "fraud_training_set", "--json")
    assert code == 0 and json.loads(out)["baseline"]["rows"] > 0
    code, out = _cli(synced, "customer_spend", "--baseline", "2000-01-01..2100-01-01", "--json")
    con = duckdb.connect(str(synced / "target" / "featuremart.duckdb"), read_only=True)
    total = con.execute("select count(*) from main.customer_spend").fetchone()[0]
    con.close()
    assert code == 0 and json.loads(out)["baseline"]["rows"] == total
    # bad input: one line, exit 1
    pq.write_table(pa.table({"spend_7d": pa.array(["a"] * 3)}), tmp_path / "typed.parquet")
    pq.write_table(pa.table({"other": pa.array([1.0])}), tmp_path / "other.parquet")
    bad = [
        (["customer_spend", "--baseline", str(tmp_path / "typed.parquet")],
         "column spend_7d holds string, but feature customer_spend.spend_7d is float"),
        (["customer_spend", "--baseline", str(tmp_path / "other.parquet")], "none of its columns is a feature"),
        (["customer_spend", "--baseline", str(tmp_path / "missing.parquet")], "no such Parquet file"),
        (["customer_spend", "--baseline", "no_such_model"], "not a .parquet file, a dbt model of this project"),
        (["customer_spend", "--baseline", "2026-02-01..2026-01-01"], "start is not before its end"),
        (["customer_spend", "--baseline", "2026-13-01..2027-01-01"], "is not an ISO date"),
        (["customer_spend", "--baseline", "1990-01-01..1991-01-01"], "it has no rows"),
        (["nope"], "no feature view 'nope'"),
        (["customer_spend.nope"], "feature view 'customer_spend' has no feature 'nope'"),
        (["customer_spend", "--runs", "0"], "--runs 0"),
    ]
    for args, message in bad:
        code, out = _cli(synced, *args)
        assert code == 1 and message in out and out.startswith("Error:"), (args, out)
        assert len([line for line in out.splitlines() if line.strip()]) == 1, out
    with FeatureStore(synced) as fs:
        client = fs.online._redis
        assert {k: client.dump(k) for k in client.keys("*")} == before  # nothing written


# ---- Postgres --------------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_statistics_match_numpy_and_duckdb(postgres_project, postgres_dsn, duck, redis_server, project,
                                                    monkeypatch):
    import psycopg2

    pg_project, env = postgres_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _, tables = duck
    schema = env["FEATUREMART_PG_SCHEMA"]
    data = tables["base"]
    with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
        cursor.execute(f'create table "{schema}".stats_base (id int, ts timestamp, x double precision, n bigint, '
                       'c text, b boolean, k double precision, a double precision[], t timestamp)')
        rows = zip(data["id"].tolist(), data["ts"], data["x"].to_pylist(), data["n"].tolist(), data["c"],
                   data["b"].to_pylist(), data["k"].tolist(), data["a"].to_pylist(), data["t"])
        cursor.executemany(f'insert into "{schema}".stats_base values (%s, %s, %s, %s, %s, %s, %s, %s, %s)',
                           [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows])
    connection.close()
    view = FeatureView("stats_base", ("c",), (("id", "int"),), "ts", timedelta(days=30),
                       tuple(Feature("stats_base", n, d) for n, d in FEATURES), Relation(None, schema, "stats_base"))
    with FeatureStore(pg_project) as fs, fs.warehouse() as wh:
        assert wh.dialect == "postgres"
        profile = _profile(wh, view)
        _check_all(profile, data, approximate_quantiles=False)  # Postgres: exact percentile_cont
        again = _profile(wh, view, profile["features"])
        assert {n: drift.compare(profile["features"][n], again["features"][n], DriftThresholds()).psi
                for n in ("x", "n", "c", "b", "k")} == dict.fromkeys(("x", "n", "c", "b", "k"), 0.0)
    # A sync of the Postgres project records what a DuckDB sync of the same data records
    client = redis_server.client()
    client.flushall()
    db1 = redis_server.url.removesuffix("/0") + "/1"
    with FeatureStore(pg_project, redis_url=db1) as fs:
        assert fs.sync(select=["customer_spend", "customer_profile"]).status == "success"
        pg = {v: StatsHistory(fs.online).read(v)[0] for v in ("customer_spend", "customer_profile")}
    monkeypatch.setenv("FEATUREMART_TARGET", "dev")
    with FeatureStore(project, redis_url=redis_server.url) as fs:  # the same data, built on DuckDB
        assert fs.sync(select=["customer_spend", "customer_profile"]).status == "success"
        duck_records = {v: StatsHistory(fs.online).read(v)[0] for v in ("customer_spend", "customer_profile")}
    for view_name, record in pg.items():
        assert record["rows"] == duck_records[view_name]["rows"] > 0
        for name, s in record["features"].items():
            d = duck_records[view_name]["features"][name]
            assert (s["count"], s["nulls"], s.get("distinct"), s.get("top")) == (
                d["count"], d["nulls"], d.get("distinct"), d.get("top")), (view_name, name)
            if s["kind"] == "number":
                assert (s["min"], s["max"], s["mean"], s["stddev"]) == pytest.approx(
                    (d["min"], d["max"], d["mean"], d["stddev"]), rel=1e-9)
                assert s["histogram"]["counts"] == d["histogram"]["counts"], (view_name, name)


def test_baseline_range_is_utc_whatever_tz(tz):
    from featuremart.errors import StatsError
    from featuremart.monitoring.baseline import Baseline

    b = Baseline.parse("2026-01-01..2026-01-02T06:00:00+02:00", [])
    assert (b.kind, b.start, b.end) == ("history", datetime(2026, 1, 1), datetime(2026, 1, 2, 4))
    assert Baseline.parse("fraud_training_set", ["fraud_training_set"]).kind == "model"
    with pytest.raises(StatsError, match="not a .parquet file, a dbt model of this project, or a date range"):
        Baseline.parse("nothing", ["fraud_training_set"])
