"""The second warehouse: the same reference project built on PostgreSQL, synced through dbt's adapter."""

from __future__ import annotations

import pytest

from featuremart import FeatureStore

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_postgres_sync_serves_what_duckdb_serves(postgres_project, project, redis_server, monkeypatch):
    """Same data, two warehouses: every served value is identical (typed, with the same event time)."""
    pg_project, env = postgres_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = redis_server.client()
    client.flushall()
    db1 = redis_server.url.removesuffix("/0") + "/1"  # the Postgres sync gets a database of its own
    with FeatureStore(pg_project, redis_url=db1) as pg:
        run = pg.sync()
        assert run.status == "success", run
        pg_views = pg.registry.views
    monkeypatch.setenv("FEATUREMART_TARGET", "dev")
    with FeatureStore(project, redis_url=redis_server.url) as duck:  # a private copy: syncing writes state
        assert duck.sync().status == "success"
        assert {n: v.version for n, v in duck.registry.views.items()} == {n: v.version for n, v in pg_views.items()}
        import duckdb

        con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
        entities = [dict(zip(("customer_id", "merchant_id"), r)) for r in con.sql(
            "select customer_id, merchant_id from main.customer_merchant_pair order by all limit 50").fetchall()]
        con.close()
        features = [f"{v}.*" for v in duck.registry.views]
        expected = duck.get_online_features(entities, features=features)
    with FeatureStore.from_url(db1) as pg_read:
        got = pg_read.get_online_features(entities, features=features)
    # Averages may differ in the last bit: the two warehouses sum in different orders.
    diffs = [(i, k, g[k], e[k]) for i, (g, e) in enumerate(zip(got, expected)) for k in e
             if (g[k].status, g[k].event_ts) != (e[k].status, e[k].event_ts) or not _same(g[k].value, e[k].value)]
    assert not diffs, diffs[:5]
    assert sum(v.status == "present" for row in got for v in row.values()) > len(entities) * 10



def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
