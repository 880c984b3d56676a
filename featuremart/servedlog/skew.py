"""Online/offline skew: the logged values of a feature service beside the point-in-time recomputation.

The comparison is the dbt macro `featuremart.served_skew_report` (macros/flywheel/), rendered by dbt for the
project's target and run in the warehouse, over the Parquet logs read in place: each logged request is
recomputed by `point_in_time_join` at its request time, with the warehouse as it is now. This module only
shapes the answer (`SkewReport`) and decides the verdict against `skew.max_mismatch_rate` of features.yml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featuremart.errors import ServedLogError

if TYPE_CHECKING:  # pragma: no cover
    from featuremart.store import FeatureStore


@dataclass(frozen=True)
class SkewExample:
    """One logged value that disagrees with the recomputation."""

    request_id: str
    request_ts: datetime
    entity_keys: str
    online_status: str
    online_value: str | None  # as logged (text)
    offline_value: str | None
    abs_diff: float | None
    outcome: str  # mismatch | missing_online | missing_offline


@dataclass
class FeatureSkew:
    """The comparison of one feature over every logged request of the service."""

    feature: str
    output_name: str
    rows: int
    mismatches: int
    missing_online: int
    missing_offline: int
    max_abs_diff: float | None
    stale_rows: int  # served under another version of the view than the one built now
    examples: list[SkewExample] = field(default_factory=list)

    def rate(self, count: int) -> float:
        return count / self.rows if self.rows else 0.0

    @property
    def mismatch_rate(self) -> float:
        return self.rate(self.mismatches)

    @property
    def disagreement_rate(self) -> float:
        """Mismatches, missing online and missing offline together: what the threshold bounds."""
        return self.rate(self.mismatches + self.missing_online + self.missing_offline)


@dataclass
class SkewReport:
    service: str
    log_dir: Path
    threshold: float
    features: list[FeatureSkew]
    unknown: dict[str, int]  # logged features the service no longer has -> rows (not compared)

    @property
    def failing(self) -> list[FeatureSkew]:
        return [f for f in self.features if f.disagreement_rate > self.threshold]

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service, "log_dir": str(self.log_dir), "max_mismatch_rate": self.threshold,
            "passed": not self.failing, "unknown_features": self.unknown,
            "features": [{
                "feature": f.feature, "rows_compared": f.rows, "mismatch_rate": f.mismatch_rate,
                "missing_online_rate": f.rate(f.missing_online), "missing_offline_rate": f.rate(f.missing_offline),
                "disagreement_rate": f.disagreement_rate, "max_abs_diff": f.max_abs_diff,
                "stale_rows": f.stale_rows,
                "examples": [{**e.__dict__, "request_ts": e.request_ts.isoformat()} for e in f.examples],
            } for f in self.features],
        }


def skew_report(store: FeatureStore, service: str, *, log_dir: str | Path | None = None,
                examples: int = 3) -> SkewReport:
    """Compare every logged read of `service` under `log_dir` with its point-in-time recomputation (the spool
    exported to Parquet first: `featuremart logs export`).

    Raises UnknownNameError for a service the project does not have, ServedLogError when nothing of it was
    logged there (nothing to compare is not a pass).
    """
    from featuremart.dbtcore import compile_inline, depends_on, jinja_literal
    from featuremart.servedlog.export import export_logs
    from featuremart.servedlog.writer import default_log_dir

    project = store.project
    directory = Path(log_dir) if log_dir is not None else default_log_dir(project.project_dir)
    if not directory.is_absolute():
        directory = project.project_dir / directory
    export_logs(directory)
    registry = store.registry
    found = registry.service(service)  # an unknown name: an error listing the services
    versions = {name: registry.views[name].version for name in found.view_names}
    log = "'(' ~ featuremart.served_log(" + jinja_literal(str(directory)) + ") ~ ')'"
    inline = depends_on(found.view_names) + (
        f"{{{{ featuremart.served_skew_report({log}, {jinja_literal(service)}, {int(examples)}, "
        f"{jinja_literal(versions)}) }}}}")
    with store.warehouse() as wh:
        wh.close()  # DuckDB: dbt opens the file itself while compiling
        sql = compile_inline(project, inline)
        rows = wh.query(sql).to_pylist()
    features: dict[str, FeatureSkew] = {}
    unknown: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: (r["feature"], r["example_rank"] or 0)):
        if row["outcome"] == "unknown_feature":
            unknown[row["feature"]] = row["rows_compared"]
            continue
        skew = features.get(row["feature"])
        if skew is None:
            skew = features[row["feature"]] = FeatureSkew(
                row["feature"], row["output_name"], row["rows_compared"], row["mismatches"], row["missing_online"],
                row["missing_offline"], row["max_abs_diff"], row["stale_rows"])
        if row["example_rank"] is not None:
            skew.examples.append(SkewExample(row["request_id"], row["request_ts"], row["entity_keys"],
                                             row["online_status"], row["online_value"], row["offline_value"],
                                             row["abs_diff"], row["outcome"]))
    if not features:
        raise ServedLogError(f"no logged reads of feature service {service} under {directory}: set "
                             f"`log: true` in its exposure's config.meta.featuremart (or serve with --log-services) "
                             "and read it first, or pass the --log-dir the server wrote to")
    ordered = [features[f.ref] for f in found.features if f.ref in features]
    return SkewReport(service, directory, store.config.max_skew_rate, ordered, unknown)
