"""The build gate: a feature view is published only when dbt built its model and every test attached to it passed
after that build, whatever dbt commands ran since (docs generate, compile, a partial test or run).

The record of results is durable: the package's own on-run-end hook (macros/hooks/record_build_results.sql)
keeps each node's latest result in the warehouse table `<target schema>.featuremart_build_results`, which
survives `dbt clean`, a fresh checkout and another machine. `target/run_results.json` is merged in, the newer
result per node winning, since it is the newer one when the hook could not write.

Example:
    >>> gate = BuildGate.load(project, manifest, warehouse)     # doctest: +SKIP
    >>> gate.withheld_reason(view)                               # doctest: +SKIP
    'test featuremart_feature_keys_unique_merchant_risk_merchant_id__event_ts failed at 2026-11-29 06:39:32 UTC: ...'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

import sqlglot

from featuremart import sql
from featuremart.config import DbtProject
from featuremart.manifest import Manifest, RunResults, load_run_results
from featuremart.registry import FeatureView, Relation
from featuremart.warehouse import Warehouse

#: The table the on-run-end hook writes, in the target's schema (one row per node: its latest result).
RESULTS_TABLE = "featuremart_build_results"
#: dbt commands whose run_results.json reports real builds and tests (compile and docs generate only compile).
EXECUTING_COMMANDS = frozenset({"build", "run", "test", "seed", "snapshot", "retry"})
_TEST_PASSED = ("pass", "warn")


@dataclass(frozen=True)
class NodeResult:
    """A node's latest result: how it ended, when (UTC), and the checksum of the node's file when it ran."""

    unique_id: str
    status: str
    message: str | None
    completed_at: datetime
    checksum: str | None = None  # None: unknown (a run_results.json older than the manifest)


def results_relation(project: DbtProject) -> Relation:
    """Where the hook records results: the target's schema (dbt-duckdb's default is `main`)."""
    default = "main" if project.adapter_type == "duckdb" else ""
    return Relation(None, str(project.target.get("schema") or default), RESULTS_TABLE)


class BuildGate:
    """Which feature views may be published, decided once per sync from dbt's recorded results."""

    def __init__(self, manifest: Manifest, results: Mapping[str, NodeResult], relation: Relation,
                 recorded: bool = True):
        self.manifest, self.results, self.relation, self.recorded = manifest, dict(results), relation, recorded

    @classmethod
    def load(cls, project: DbtProject, manifest: Manifest, warehouse: Warehouse) -> BuildGate:
        """Read the warehouse record and target/run_results.json, keeping the newer result of each node."""
        relation = results_relation(project)
        recorded = bool(warehouse.columns([relation]))
        table = read_recorded(warehouse, relation) if recorded else {}
        return cls(manifest, newest(table, read_run_results(project, manifest)), relation, recorded)

    def withheld_reason(self, view: FeatureView) -> str | None:
        """Why `view` may not be published (the true reason, with what to run), or None when it may."""
        model = self.manifest.models.get(view.model_id)
        name = model.name if model is not None else view.name
        build = self.results.get(view.model_id)
        if build is None:
            where = (f"in {self.relation} nor in target/run_results.json" if self.recorded else
                     f"in target/run_results.json, and {self.relation} does not exist yet (featuremart's "
                     "on-run-end hook creates it during `dbt build`)")
            return f"never built: no dbt result of model {name} {where}: run `dbt build -s {name}`"
        if build.status == "empty":
            return (f"its latest build at {_utc(build.completed_at)} ran with `--empty` (no rows): "
                    f"run `dbt build -s {name}`")
        if build.status != "success":
            detail = f": {build.message}" if build.message else ""
            return (f"its latest build failed at {_utc(build.completed_at)} ({build.status}){detail}; "
                    f"fix it, then run `dbt build -s {name}`")
        if build.checksum and model is not None and model.checksum and build.checksum != model.checksum:
            return (f"changed since its last build at {_utc(build.completed_at)} (its SQL is not what was built): "
                    f"run `dbt build -s {name}`")
        stale: list[NodeResult] = []
        for test in sorted(self.manifest.tests_on(view.model_id), key=lambda t: t.unique_id):
            test_name = _node_name(test.unique_id)
            outcome = self.results.get(test.unique_id)
            if outcome is None:
                return f"test {test_name} has never run: run `dbt build -s {name}` or `dbt test -s {name}`"
            if outcome.completed_at < build.completed_at:
                stale.append(outcome)
            elif outcome.status not in _TEST_PASSED:
                verb = "failed" if outcome.status == "fail" else f"ended '{outcome.status}'"
                detail = f": {outcome.message}" if outcome.message else ""
                return f"test {test_name} {verb} at {_utc(outcome.completed_at)}{detail}"
        if stale:
            last = max(outcome.completed_at for outcome in stale)
            return (f"built at {_utc(build.completed_at)} but its tests last ran at {_utc(last)}, before it: "
                    f"run `dbt build -s {name}` or `dbt test -s {name}`")
        return None


def newest(*sources: Mapping[str, NodeResult]) -> dict[str, NodeResult]:
    """Per node, the result that completed last (the first source wins a tie: the same result, read twice)."""
    merged: dict[str, NodeResult] = {}
    for source in sources:
        for uid, result in source.items():
            if uid not in merged or result.completed_at > merged[uid].completed_at:
                merged[uid] = result
    return merged


def read_recorded(warehouse: Warehouse, relation: Relation) -> dict[str, NodeResult]:
    """The hook's record: each node's latest result, as written by macros/hooks/record_build_results.sql."""
    query = sqlglot.select(*(sql.col(c) for c in ("unique_id", "status", "message", "checksum", "completed_at"))) \
        .from_(sql.table(relation))
    rows = []
    for row in warehouse.records(sql.render(query, warehouse.dialect)):
        moment = row["completed_at"]
        if moment is None:
            continue
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
        rows.append({row["unique_id"]: NodeResult(row["unique_id"], row["status"], row["message"], moment,
                                                  row["checksum"] or None)})
    return newest(*rows)  # two dbt runs writing at once may leave two rows of a node: the newer counts


def read_run_results(project: DbtProject, manifest: Manifest) -> dict[str, NodeResult]:
    """Results in target/run_results.json, if a command that builds or tests wrote it (not compile or docs).

    run_results.json has no node checksums: they are the manifest's when the same invocation wrote both."""
    if not (project.target_dir / "run_results.json").exists():
        return {}
    run_results: RunResults = load_run_results(project.target_dir)
    if run_results.command not in EXECUTING_COMMANDS:
        return {}
    same_invocation = bool(run_results.invocation_id) and run_results.invocation_id == manifest.invocation_id
    written = _parse_utc(run_results.generated_at)
    results = {}
    for uid, result in run_results.results.items():
        if result.status == "skipped" or not (result.completed_at or written):
            continue
        model = manifest.models.get(uid)
        checksum = model.checksum if same_invocation and model is not None else None
        status = "empty" if run_results.empty and model is not None and result.status == "success" else result.status
        results[uid] = NodeResult(uid, status, result.message, result.completed_at or written, checksum)
    return results


def _node_name(unique_id: str) -> str:
    """`test.pkg.name.hash` -> `name`."""
    parts = unique_id.split(".")
    return parts[2] if len(parts) > 2 else unique_id


def _parse_utc(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
