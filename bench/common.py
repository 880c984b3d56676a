"""What the benchmark scripts share: the dbt project they generate around featuremart (installed as a package),
and how they summarise and save repeated measurements."""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dbt_project(dest: Path, name: str, *, join_key_type: str, key_prefix: str, extra_vars: str = "",
                extra_outputs: str = "") -> None:
    """dbt_project.yml, packages.yml (featuremart from this checkout), profiles.yml (DuckDB at dest/bench.duckdb,
    plus `extra_outputs`) and features.yml of a bench project whose one entity is `customer`."""
    (dest / "models").mkdir(parents=True, exist_ok=True)
    (dest / "dbt_project.yml").write_text(textwrap.dedent(f"""\
        name: {name}
        version: "1.0.0"
        config-version: 2
        profile: {name}
        models:
          {name}: {{+materialized: table}}
        vars:
          featuremart_entities:
            customer: {{join_keys: {{customer_id: {join_key_type}}}}}
        """) + textwrap.indent(extra_vars, "  "))
    (dest / "packages.yml").write_text(f"packages:\n  - local: {ROOT}\n")
    (dest / "profiles.yml").write_text(textwrap.dedent(f"""\
        {name}:
          target: dev
          outputs:
            dev: {{type: duckdb, path: "{dest / 'bench.duckdb'}", threads: 2}}
        """) + textwrap.indent(extra_outputs, " " * 4))
    (dest / "features.yml").write_text(f"version: 1\nonline_store: {{key_prefix: {key_prefix}}}\n")


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements (rounded to the millisecond), and how many there were."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def save(path: Path, results: dict) -> None:
    """Write a bench's results as JSON (bench/results/ is not committed) and print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
