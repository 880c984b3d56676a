"""Monitoring: how fresh each feature view is from source to online, and what its values look like.

Modules: `freshness` (the verdicts and the facts they judge: dbt source freshness, lineage, the sync's publish
record), `status` (one row per view and service), `metrics` (Prometheus gauges for `featuremart serve`),
`stats` (statistics the warehouse computes at every sync), `drift` (PSI and KS against the previous publish or a
baseline), `baseline` (what a baseline can be). See docs/monitoring.md.
"""
