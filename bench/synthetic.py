"""A synthetic one-view project for the write benchmarks (bench/cluster.py, bench/durable_state.py): a DuckDB
table of N entities × 10 features and an in-process sync of it, without dbt, so that only the sync is timed.
bench/sync.py measures the whole path through a generated dbt project instead."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from featuremart.config import Entity
from featuremart.gate import BuildGate, NodeResult
from featuremart.manifest import Manifest
from featuremart.online.store import OnlineStore
from featuremart.registry import Feature, FeatureView, Registry, Relation
from featuremart.sync import Syncer
from featuremart.warehouse import DuckDBWarehouse

FEATURES = [f"f{i}" for i in range(10)]
NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def make_table(path: Path, entities: int, history: int) -> None:
    """`history` rows per entity, a day apart, the newest within the ttl; 5 int and 5 float features."""
    cols = ", ".join(f"(hash(i, h, {n}) % 100000)::bigint as f{n}" if n < 5 else
                     f"(hash(i, h, {n}) % 1000000) / 100.0 as f{n}" for n in range(10))
    con = duckdb.connect(str(path))
    con.execute(f"""
        create or replace table feats as
        select 'C' || lpad(i::varchar, 8, '0') as customer_id,
               timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval (h) day - interval (i % 3600) second as ts, {cols},
               timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval 1 day as changed_at
        from range({entities}) e(i), range({history}) r(h)
    """)
    con.close()


def view(features: int = 10, changed_at: str | None = "changed_at") -> FeatureView:
    """The table's view: `features` of its columns (5 int then float; f10.. where the table has them)."""
    return FeatureView(name="feats", entities=("customer",), join_keys=(("customer_id", "string"),), timestamp="ts",
                       ttl=timedelta(days=30), relation=Relation(None, "main", "feats"), model_id="model.b.feats",
                       changed_at=changed_at,
                       features=tuple(Feature("feats", f"f{n}", "int" if n < 5 else "float") for n in range(features)))


def manifest(db: Path) -> Manifest:
    return Manifest(db, 12, "", "2026-01-01T00:00:00Z", "duckdb", "bench", {}, (), {}, {}, project_name="bench")


def sync(db: Path, url: str, state: Path, v: FeatureView | None = None, **kw):
    """An in-process sync of the view (default `view()`): (seconds, its ViewResult)."""
    v = v or view()
    registry = Registry({"customer": Entity("customer", (("customer_id", "string"),))}, {"feats": v}, {})
    m = manifest(db)
    built = {v.model_id: NodeResult(v.model_id, "success", None, datetime.now(timezone.utc).replace(tzinfo=None))}
    gate = BuildGate(m, built, Relation(None, "main", "featuremart_build_results"))
    with OnlineStore.connect(url, embedded_dir=state, prefix="fm") as store, DuckDBWarehouse(db) as wh:
        started = time.perf_counter()
        run = Syncer(registry, m, gate, wh, store, state).run([v], **kw)
        seconds = time.perf_counter() - started
    assert run.status in ("success", "dry-run"), run
    return seconds, run.views[0]
