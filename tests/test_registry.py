"""Unit tests: features.yml, the manifest reader and registry validation — every error message. No I/O but tmp files."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from featuremart.config import load_features_yml, parse_duration
from featuremart.errors import ArtifactError, ConfigError, UnknownNameError, ValidationError
from featuremart.manifest import load_manifest
from featuremart.registry import Registry, Relation, build_registry, output_names

FEATURES_YML = """
version: 1
defaults: {tier: silver}
tiers:
  gold: {freshness: {error_after: {count: 2, period: day}}}
  silver: {}
  bronze: {online: false}
"""

VARS = {"featuremart_entities": {"customer": {"join_keys": {"customer_id": "string"}},
                                 "merchant": {"join_keys": {"merchant_id": "string"}}},
        "featuremart_default_ttl": "30d"}

SPEND_COLUMNS = {"customer_id": "VARCHAR", "event_ts": "TIMESTAMP", "spend_7d": "DOUBLE", "n_7d": "BIGINT",
                 "computed_at": "TIMESTAMP"}


def model_node(name, meta, columns=None, tests=True):
    return {
        "resource_type": "model", "unique_id": f"model.p.{name}", "name": name, "package_name": "p",
        "original_file_path": f"models/{name}.sql", "patch_path": f"p://models/{name}.yml",
        "database": "db", "schema": "main", "alias": name, "description": f"{name} desc",
        "config": {"materialized": "table", "meta": {"featuremart": meta}},
        "columns": columns or {}, "tags": [], "depends_on": {"nodes": ["source.p.raw.t"]},
    }


def make_test_node(model, name, kwargs):
    return {"resource_type": "test", "unique_id": f"test.p.{name}_{model}", "attached_node": f"model.p.{model}",
            "test_metadata": {"name": name, "namespace": "featuremart", "kwargs": kwargs}}


def write_manifest(tmp_path: Path, models: list[dict], exposures: dict | None = None, tests: list[dict] | None = None,
                   schema: str = "https://schemas.getdbt.com/dbt/manifest/v12.json") -> Path:
    nodes = {m["unique_id"]: m for m in models}
    for t in tests if tests is not None else [
        t for m in models for t in (make_test_node(m["name"], "feature_keys_not_null", {"keys": ["customer_id"]}),
                                     make_test_node(m["name"], "feature_keys_unique",
                                               {"keys": ["customer_id"], "timestamp": "event_ts"}))
    ]:
        nodes[t["unique_id"]] = t
    manifest = {"metadata": {"dbt_schema_version": schema, "dbt_version": "1.11.0", "adapter_type": "duckdb"},
                "nodes": nodes, "exposures": exposures or {}, "sources": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.fixture
def config(tmp_path):
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    return load_features_yml(tmp_path, VARS)


def build(tmp_path, config, models, columns=None, exposures=None):
    manifest = load_manifest(write_manifest(tmp_path, models, exposures))
    wh = {Relation("db", "main", m["name"]): (columns or SPEND_COLUMNS) for m in models}
    return build_registry(manifest, config, wh)


def errors_of(tmp_path, config, models, **kw) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        build(tmp_path, config, models, **kw)
    return exc.value.problems


GOOD = {"entity": "customer", "timestamp": "event_ts", "ttl": "7d", "owner": "risk", "tier": "gold"}


def test_a_valid_view(tmp_path, config):
    cols = {"computed_at": {"name": "computed_at", "config": {"meta": {"featuremart": {"feature": False}}}},
            "spend_7d": {"name": "spend_7d", "description": "spend in 7 days"}}
    registry = build(tmp_path, config, [model_node("spend", GOOD, cols)])
    view = registry.view("spend")
    assert [f.name for f in view.features] == ["spend_7d", "n_7d"]
    assert [f.dtype for f in view.features] == ["float", "int"]
    assert view.feature("spend_7d").description == "spend in 7 days"
    assert view.ttl == timedelta(days=7) and view.key_names == ("customer_id",) and view.tier == "gold"
    assert view.freshness.error_after == timedelta(days=2)  # from the tier policy
    assert view.yaml_path == "models/spend.yml"
    assert registry.problems == []


def test_version_changes_with_schema_only(tmp_path, config):
    v1 = build(tmp_path, config, [model_node("spend", GOOD)]).view("spend")
    v2 = build(tmp_path, config, [model_node("spend", {**GOOD, "owner": "other"})]).view("spend")
    v3 = build(tmp_path, config, [model_node("spend", GOOD)], columns={**SPEND_COLUMNS, "n_7d": "DOUBLE"}).view("spend")
    assert v1.version == v2.version != v3.version


def test_unknown_entity(tmp_path, config):
    [msg] = errors_of(tmp_path, config, [model_node("spend", {**GOOD, "entity": "custmer"})])
    assert "models/spend.yml: model spend: unknown entity 'custmer'" in msg and "customer, merchant" in msg


def test_missing_timestamp_column(tmp_path, config):
    [msg] = errors_of(tmp_path, config, [model_node("spend", {**GOOD, "timestamp": "evt_ts"})])
    assert "timestamp column 'evt_ts' is not an output column" in msg and "models/spend.yml" in msg


def test_no_timestamp_in_meta(tmp_path, config):
    meta = {k: v for k, v in GOOD.items() if k != "timestamp"}
    [msg] = errors_of(tmp_path, config, [model_node("spend", meta)])
    assert "model spend: config.meta.featuremart.timestamp: required: the event-time column" in msg


def test_feature_the_model_does_not_output(tmp_path, config):
    cols = {"spend_90d": {"name": "spend_90d", "description": "?"}}
    [msg] = errors_of(tmp_path, config, [model_node("spend", GOOD, cols)])
    assert "column 'spend_90d' is described in the YAML but the model does not output it" in msg
    assert "models/spend.sql" in msg


def test_bad_ttl(tmp_path, config):
    [msg] = errors_of(tmp_path, config, [model_node("spend", {**GOOD, "ttl": "7 dayz"})])
    assert "model spend: config.meta.featuremart.ttl: '7 dayz' is not a duration" in msg and "30d" in msg


def test_unknown_meta_key_and_tier_all_reported_at_once(tmp_path, config):
    problems = errors_of(tmp_path, config, [model_node("spend", {**GOOD, "tll": "7d", "tier": "platinum"})])
    assert len(problems) == 2
    assert any("config.meta.featuremart.tll: unknown key; did you mean 'ttl'?" in p for p in problems)
    assert any("unknown tier 'platinum'" in p for p in problems)


def test_key_type_mismatch_and_unsupported_type(tmp_path, config):
    cols = {**SPEND_COLUMNS, "customer_id": "BIGINT", "blob": "BLOB"}
    problems = errors_of(tmp_path, config, [model_node("spend", GOOD)], columns=cols)
    assert any("entity key 'customer_id' has warehouse type BIGINT but dbt_project.yml vars.featuremart_entities "
               "declares string" in p
               for p in problems)
    assert any("column 'blob' has type BLOB, which featuremart cannot serve" in p for p in problems)


def test_model_not_built(tmp_path, config):
    manifest = load_manifest(write_manifest(tmp_path, [model_node("spend", GOOD)]))
    with pytest.raises(ValidationError) as exc:
        build_registry(manifest, config, {})
    assert "relation db.main.spend was not found in the warehouse: run `dbt build --select spend`" in str(exc.value)


def test_missing_tests_are_warnings(tmp_path, config):
    manifest = load_manifest(write_manifest(tmp_path, [model_node("spend", GOOD)], tests=[]))
    registry = build_registry(manifest, config, {Relation("db", "main", "spend"): SPEND_COLUMNS})
    assert len(registry.problems) == 2
    assert "featuremart.feature_keys_unique: {arguments: {keys: ['customer_id'], timestamp: event_ts}}" in str(
        registry.problems[1])


def test_bronze_tier_is_never_online(tmp_path, config):
    registry = build(tmp_path, config, [model_node("spend", {**GOOD, "tier": "bronze"})])
    assert registry.view("spend").online is False


def exposure(features, type_="ml"):
    return {"exposure.p.m": {"name": "m", "type": type_, "original_file_path": "models/exposures.yml",
                             "owner": {"name": "ml team"}, "config": {"meta": {"featuremart": {"features": features}}}}}


def test_services_resolve_and_validate(tmp_path, config):
    registry = build(tmp_path, config, [model_node("spend", GOOD)], exposures=exposure(["spend.*"]))
    assert [f.ref for f in registry.service("m").features] == ["spend.spend_7d", "spend.n_7d", "spend.computed_at"]
    problems = errors_of(tmp_path, config, [model_node("spend", GOOD)],
                         exposures=exposure(["spend.nope", "other.x", "bad"]))
    assert len(problems) == 3
    assert "models/exposures.yml: exposure m: view spend has no feature 'nope'" in problems[0]
    assert "names no valid feature view" in problems[1] and "should be written view.feature" in problems[2]
    non_ml = build(tmp_path, config, [model_node("spend", GOOD)], exposures=exposure(["x.y"], type_="dashboard"))
    assert non_ml.services == {}


def test_resolve_and_lookups(tmp_path, config):
    registry = build(tmp_path, config, [model_node("spend", GOOD)], exposures=exposure(["spend.n_7d"]))
    assert [f.ref for f in registry.resolve(features=["spend.n_7d", "spend.*"])] == [
        "spend.n_7d", "spend.spend_7d", "spend.computed_at"]
    with pytest.raises(UnknownNameError, match="no feature service 'x'; services .*: m"):
        registry.resolve(service="x")
    with pytest.raises(UnknownNameError, match="has no feature 'zz'; its features: spend_7d, n_7d, computed_at"):
        registry.feature("spend.zz")


def test_snapshot_round_trip(tmp_path, config):
    registry = build(tmp_path, config, [model_node("spend", GOOD)], exposures=exposure(["spend.n_7d"]))
    again = Registry.from_snapshot(json.loads(json.dumps(registry.to_snapshot())))
    assert again.view("spend").version == registry.view("spend").version
    assert again.view("spend").features == tuple(
        type(f)(f.view, f.name, f.dtype, f.description) for f in registry.view("spend").features)
    assert [f.ref for f in again.service("m").features] == ["spend.n_7d"]


def test_output_names_prefix_collisions():
    from featuremart.registry import Feature

    fs = [Feature("a", "x", "int"), Feature("b", "x", "int"), Feature("b", "y", "int"), Feature("c", "customer_id", "int")]
    assert output_names(fs, reserved=["customer_id"]) == ["a__x", "b__x", "y", "c__customer_id"]


@pytest.mark.parametrize("text,expected", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                           ("90m", timedelta(minutes=90)), ("2w", timedelta(weeks=2)),
                                           ("45 seconds", timedelta(seconds=45)), ("7 days", timedelta(days=7))])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7 dayz", "1mo", "", "-1d", "1.5d", None])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_manifest_schema_checked(tmp_path):
    write_manifest(tmp_path, [], schema="https://schemas.getdbt.com/dbt/manifest/v9.json")
    with pytest.raises(ArtifactError, match=r"manifest schema .*v9.json.*featuremart reads v12"):
        load_manifest(tmp_path)


def test_no_target_dir(tmp_path):
    with pytest.raises(ArtifactError, match=r"manifest.json not found: run `dbt build`"):
        load_manifest(tmp_path / "target")


@pytest.mark.parametrize("yml,message", [
    ("online_store: {url: 'redis://x'}", "is not read from files"),
    ("entites: {}", r"entites: unknown key; did you mean 'entities'\? That moved to dbt_project.yml"),
    ("defaults: {tier: nope}", "defaults.tier: 'nope' is not a tier"),
    ("version: [", "is not valid YAML"),
])
def test_features_yml_errors(tmp_path, yml, message):
    (tmp_path / "features.yml").write_text(yml)
    with pytest.raises(ConfigError, match=message):
        load_features_yml(tmp_path, VARS)


def test_features_yml_missing(tmp_path):
    with pytest.raises(ConfigError, match="features.yml not found"):
        load_features_yml(tmp_path, VARS)


def test_changed_at_is_checked_and_not_a_feature(tmp_path, config):
    view = build(tmp_path, config, [model_node("spend", {**GOOD, "changed_at": "computed_at"})]).view("spend")
    assert view.changed_at == "computed_at" and "computed_at" not in [f.name for f in view.features]
    [msg] = errors_of(tmp_path, config, [model_node("spend", {**GOOD, "changed_at": "loaded_at"})])
    assert "changed_at column 'loaded_at' is not an output column" in msg
    [msg] = errors_of(tmp_path, config, [model_node("spend", {**GOOD, "changed_at": "n_7d"})])
    assert "changed_at column 'n_7d' has type BIGINT; it must be a timestamp" in msg
