"""docs/tutorial.md works as written: its files, pasted into a small dbt project the way the text says, build,
validate, sync, read back and give the same training set from the CLI and from the dbt model.

The project around the tutorial (a staging model of card transactions, the profile) is this test's; every
file the tutorial asks for is taken from the page, so an edit that breaks the page breaks this test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import dbt, nullable

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = (ROOT / "docs" / "tutorial.md").read_text()
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def tutorial_files() -> dict[str, str]:
    """The files the tutorial creates, by path: a block whose first line is a `-- path` comment, or the last
    `path.sql`/`path.yml` named in the text just before the block."""
    files, position = {}, 0
    for match in BLOCK.finditer(TUTORIAL):
        lang, body = match.groups()
        before = TUTORIAL[position:match.start()]
        position = match.end()
        first = body.splitlines()[0] if body else ""
        named = re.findall(r"`((?:models|macros)/[\w/]+\.(?:sql|yml))`", before)
        if lang == "sql" and first.startswith("-- models/"):
            files[first[3:].strip()] = body
        elif lang in ("sql", "yaml") and named:
            files[named[-1]] = body
    return files


def tutorial_block(marker: str) -> str:
    return next(body for _, body in BLOCK.findall(TUTORIAL) if marker in body)


def write_project(project: Path) -> None:
    """A dbt project that already has `vars:` and `packages:` of its own; the tutorial's blocks go under them."""
    (project / "models" / "staging").mkdir(parents=True)
    (project / "seeds").mkdir()
    vars_block = tutorial_block("featuremart_entities:")
    (project / "dbt_project.yml").write_text(
        "name: shop\nversion: '1.0.0'\nconfig-version: 2\nprofile: shop\n"
        "models:\n  shop:\n    staging:\n      +materialized: view\n"
        "vars:\n  shop_currency: EUR\n" + vars_block
    )
    package = tutorial_block("featuremart.git").replace("- git: https://github.com/your-org/featuremart.git", f"- local: {ROOT}")
    package = "\n".join(line for line in package.splitlines() if "revision:" not in line)
    (project / "packages.yml").write_text("packages:\n  - local: ../shared_macros_stand_in\n" + package + "\n")
    (project.parent / "shared_macros_stand_in").mkdir()
    (project.parent / "shared_macros_stand_in" / "dbt_project.yml").write_text(
        "name: shared_macros\nversion: '1.0.0'\nconfig-version: 2\n")
    (project / "profiles.yml").write_text(
        "shop:\n  target: dev\n  outputs:\n    dev: {type: duckdb, path: target/shop.duckdb, threads: 2}\n")
    (project / "features.yml").write_text(tutorial_block("version: 1"))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    rng = random.Random(7)
    rows = ["txn_id,customer_id,amount,txn_ts,ingested_at,is_chargeback"]
    for i in range(300):
        txn_ts = now - dt.timedelta(minutes=rng.randint(60, 60 * 24 * 10))
        ingested_at = txn_ts + dt.timedelta(minutes=rng.choice([1, 30, 180]))
        rows.append(f"T{i:05d},C{rng.randint(1, 20):07d},{rng.randint(100, 20000) / 100},{txn_ts},{ingested_at},"
                    f"{str(rng.random() < 0.05).lower()}")
    (project / "seeds" / "raw_transactions.csv").write_text("\n".join(rows) + "\n")
    (project / "seeds" / "_seeds.yml").write_text(
        "version: 2\nseeds:\n  - name: raw_transactions\n    config:\n      column_types: {txn_id: varchar, "
        "customer_id: varchar, amount: double, txn_ts: timestamp, ingested_at: timestamp, is_chargeback: boolean}\n")
    (project / "models" / "staging" / "stg_transactions.sql").write_text("select * from {{ ref('raw_transactions') }}\n")
    for path, body in tutorial_files().items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(body)


def featuremart(project: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {"FEATUREMART_REDIS_URL": redis_url, "COLUMNS": "200"}
    command = [str(Path(sys.executable).with_name("featuremart")), *args, "--project-dir", str(project)]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def test_the_tutorial_works_as_written(tmp_path: Path, redis_url: str) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    write_project(project)
    assert set(tutorial_files()) >= {"models/features/customer_daily_spend.sql", "models/features/customer_daily_spend.yml",
                                     "models/feature_services.yml", "models/labels/fraud_labels.sql",
                                     "models/training/fraud_training_set.sql"}
    dbt(project, "deps")
    dbt(project, "seed")
    dbt(project, "build", "--select", "+customer_daily_spend")

    for command in (["validate"], ["sync"]):
        result = featuremart(project, redis_url, *command)
        assert result.returncode == 0, result.stdout + result.stderr
    with duckdb.connect(str(project / "target" / "shop.duckdb"), read_only=True) as warehouse:
        latest = dict(warehouse.execute(
            "select customer_id, arg_max(spend_1d, event_ts) from customer_daily_spend "
            "where event_ts <= now() at time zone 'UTC' and event_ts >= now() at time zone 'UTC' - interval 2 day "
            "group by customer_id").fetchall())
    assert latest, "the tutorial's data has no value within the 2d ttl"
    customer, spend = sorted(latest.items())[0]
    result = featuremart(project, redis_url, "get", "--service", "fraud_model", f"customer_id={customer}", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    served = json.loads(result.stdout)["spend_1d"]
    assert served["status"] == "present" and served["value"] == pytest.approx(spend)

    dbt(project, "build")
    output = tmp_path / "train.parquet"
    result = featuremart(project, redis_url, "training-set", "--spine", "fraud_labels", "--timestamp", "label_ts",
                         "--service", "fraud_model", "--output", str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    from_cli = pq.read_table(output)
    with duckdb.connect(str(project / "target" / "shop.duckdb"), read_only=True) as warehouse:
        from_model = warehouse.sql("select * from fraud_training_set").to_arrow_table()
    assert from_cli.num_rows == 300
    assert nullable(from_cli).sort_by("txn_id").equals(from_model.sort_by("txn_id"))
