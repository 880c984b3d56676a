"""Monitoring: how fresh each feature view is from source to online (`featuremart status`, `/metrics`).

Modules: `freshness` (the verdicts and the facts they judge: dbt source freshness, lineage, the sync's publish
record), `status` (one row per view and service), `metrics` (Prometheus gauges for `featuremart serve`).
See docs/monitoring.md.
"""
