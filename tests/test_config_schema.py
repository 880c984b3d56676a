"""Hostile input: every wrong shape of features.yml, the featuremart dbt vars and model/column meta is one line
naming the file, the path inside it and what is expected — never a traceback, never silently misread.

Table-driven: most variants go through the loaders, a handful through the real `featuremart validate`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from featuremart.config import load_features_yml
from featuremart.errors import ConfigError, ValidationError
from tests.conftest import ROOT, dbt
from tests.test_registry import FEATURES_YML, GOOD, VARS, build, model_node

ENTITIES = VARS["featuremart_entities"]
EXPECT_VIEW = "models/spend.yml: model spend: config.meta.featuremart"

# (features.yml text, the exact error message)
FEATURES_CASES = [
    ("entities: [customer]", "features.yml: entities: moved to dbt_project.yml as vars.featuremart_entities (the "
     "dbt macros need the join keys, and dbt cannot read features.yml); move the block there under vars:, "
     "unchanged, and delete it here"),
    ("entities: {customer: {join_keys: {customer_id: string}}}", "features.yml: entities: moved to dbt_project.yml "
     "as vars.featuremart_entities (the dbt macros need the join keys, and dbt cannot read features.yml); move the "
     "block there under vars:, unchanged, and delete it here"),
    ("defaults: {ttl: 3d}", "features.yml: defaults.ttl: moved to dbt_project.yml as vars.featuremart_default_ttl "
     "(the dbt macros need it too, and dbt cannot read features.yml); delete it here and write "
     "`featuremart_default_ttl: 3d` under vars: there"),
    ("defaults: {tll: 3d}", "features.yml: defaults.tll: unknown key; did you mean 'ttl'? That moved to "
     "dbt_project.yml vars.featuremart_default_ttl (allowed: online, tier, max_delete_fraction)"),
    ("online_store: redis://host:6379", "features.yml: online_store: expected a mapping (key: value), got a string "
     "'redis://host:6379'"),
    ("online_store: {keyprefix: fm}", "features.yml: online_store.keyprefix: unknown key; did you mean "
     "'key_prefix'? (allowed: url_env, key_prefix)"),
    ("online_store: {url: 'redis://:secret@h'}", "features.yml: online_store.url: the Redis URL is not read from "
     "files (secrets stay out of them): set it in the environment variable that online_store.url_env names"),
    ("online_store: {url_env: 'my-redis'}", "features.yml: online_store.url_env: 'my-redis' is not an environment "
     "variable name (letters, digits and _, not starting with a digit); name the variable that holds the Redis "
     "URL, e.g. FEATUREMART_REDIS_URL"),
    ("online_store: {url_env: 42}", "features.yml: online_store.url_env: expected a string, got a number 42"),
    ("online_store: {key_prefix: 'a b'}", "features.yml: online_store.key_prefix: 'a b' may only hold letters, "
     "digits, _ . -"),
    ("online_store: {key_prefix: ''}", "features.yml: online_store.key_prefix: must not be empty"),
    ("defaults: 5", "features.yml: defaults: expected a mapping (key: value), got a number 5"),
    ("defaults: {online: 'false'}", "features.yml: defaults.online: expected true or false, got a string 'false' "
     "(quoted: write it without quotes)"),
    ("defaults: {online: 1}", "features.yml: defaults.online: expected true or false, got a number 1"),
    ("defaults: {tier: platinum}\ntiers: {gold: {}}", "features.yml: defaults.tier: 'platinum' is not a tier; "
     "tiers: gold"),
    ("tiers: [gold, silver]", "features.yml: tiers: expected a mapping (key: value), got a list ['gold', 'silver']"),
    ("tiers: {gold: premium}", "features.yml: tiers.gold: expected a mapping (key: value), got a string 'premium'"),
    ("tiers: {gold: [a]}", "features.yml: tiers.gold: expected a mapping (key: value), got a list ['a']"),
    ("tiers: {gold: {description: [a, b]}}", "features.yml: tiers.gold.description: expected a string, got a list "
     "['a', 'b']"),
    ("tiers: {gold: {online: 'no'}}", "features.yml: tiers.gold.online: expected true or false, got a string 'no' "
     "(quoted: write it without quotes)"),
    ("tiers: {gold: {fresh: {}}}", "features.yml: tiers.gold.fresh: unknown key; did you mean 'freshness'? "
     "(allowed: description, freshness, online, drift)"),
    ("tiers: {gold: {freshness: {warn_after: {count: two, period: day}}}}", "features.yml: "
     "tiers.gold.freshness.warn_after.count: expected a whole number, got a string 'two'"),
    ("tiers: {gold: {freshness: {warn_after: {count: 0, period: day}}}}", "features.yml: "
     "tiers.gold.freshness.warn_after.count: must be greater than 0, got a number 0"),
    ("tiers: {gold: {freshness: {error_after: {count: 2, period: month}}}}", "features.yml: "
     "tiers.gold.freshness.error_after.period: expected minute, hour or day, got a string 'month'"),
    ("tiers: {gold: {freshness: {warn_afer: {count: 2, period: day}}}}", "features.yml: "
     "tiers.gold.freshness.warn_afer: unknown key; did you mean 'warn_after'? (allowed: warn_after, error_after)"),
    ("version: 99", "features.yml: version: expected 1, got a number 99"),
    ("defaults: {max_delete_fraction: 2}", "features.yml: defaults.max_delete_fraction: must be at most 1, got a "
     "number 2"),
    ("version: '1'", "features.yml: version: expected 1, got a string '1'"),
    ("verison: 1", "features.yml: verison: unknown key; did you mean 'version'? (allowed: version, online_store, "
     "defaults, skew, tiers)"),
]

# (dbt vars, the exact error message)
VARS_CASES = [
    ({"featuremart_entities": ["customer"]}, "dbt_project.yml: vars.featuremart_entities: expected a mapping "
     "(key: value), got a list ['customer']"),
    ({"featuremart_entities": {"customer": "customer_id"}}, "dbt_project.yml: vars.featuremart_entities.customer: "
     "expected a mapping (key: value), got a string 'customer_id'"),
    ({"featuremart_entities": {"customer": ["customer_id"]}}, "dbt_project.yml: vars.featuremart_entities.customer: "
     "expected a mapping (key: value), got a list ['customer_id']"),
    ({"featuremart_entities": {"customer": {"join_keys": {1: "string"}}}}, "dbt_project.yml: "
     "vars.featuremart_entities.customer.join_keys: key 1 must be a string, got a number 1"),
    ({"featuremart_entities": {"customer": {"joinkeys": {"customer_id": "string"}}}}, "dbt_project.yml: "
     "vars.featuremart_entities.customer.joinkeys: unknown key; did you mean 'join_keys'? (allowed: description, "
     "join_keys)"),
    ({"featuremart_entities": {"customer": {"join_keys": {"customer_id": "float"}}}}, "dbt_project.yml: "
     "vars.featuremart_entities.customer.join_keys.customer_id: expected string or int, got a string 'float'"),
    ({"featuremart_entities": {"customer": {"join_keys": {}}}}, "dbt_project.yml: "
     "vars.featuremart_entities.customer.join_keys: must not be empty"),
    ({"featuremart_entities": {"customer": {"join_keys": ["customer_id"]}}}, "dbt_project.yml: "
     "vars.featuremart_entities.customer.join_keys: expected a mapping (key: value), got a list ['customer_id']"),
    ({"featuremart_entities": {"customer": {"description": "x"}}}, "dbt_project.yml: "
     "vars.featuremart_entities.customer.join_keys: required: the key columns and their types, e.g. join_keys: "
     "{customer_id: string}"),
    ({"featuremart_entities": {"customer": {"description": ["a", "b"], "join_keys": {"customer_id": "string"}}}},
     "dbt_project.yml: vars.featuremart_entities.customer.description: expected a string, got a list ['a', 'b']"),
    ({"featuremart_entities": {}}, "dbt_project.yml: vars.featuremart_entities: must not be empty"),
    (["featuremart_entities"], "dbt_project.yml: vars: expected a mapping (key: value), got a list "
     "['featuremart_entities']"),
    ({}, "dbt_project.yml: vars.featuremart_entities: required: declare your entities under vars:, e.g. "
     "featuremart_entities: {customer: {join_keys: {customer_id: string}}}"),
    ({"featuremart_entitys": ENTITIES}, "dbt_project.yml: vars.featuremart_entitys: not a featuremart var; did you "
     "mean 'featuremart_entities'?"),
    ({"featuremart_entities": ENTITIES, "featuremart_default_ttl": "9999999999d"}, "dbt_project.yml: "
     "vars.featuremart_default_ttl: '9999999999d' is too long a duration: the longest ttl is 36500d (100 years)"),
    ({"featuremart_entities": ENTITIES, "featuremart_default_ttl": "0s"}, "dbt_project.yml: "
     "vars.featuremart_default_ttl: a ttl of '0s' would expire every value as soon as it is written (and delete "
     "every key of the view); use at least 1s"),
    ({"featuremart_entities": ENTITIES, "featuremart_default_ttl": 30}, "dbt_project.yml: "
     "vars.featuremart_default_ttl: expected a duration such as 30d, 12h, 90m or 2w, got a number 30"),
    ({"featuremart_entities": ENTITIES, "featuremart_default_ttl": "36501d"}, "dbt_project.yml: "
     "vars.featuremart_default_ttl: '36501d' is longer than the longest ttl, 36500d (100 years)"),
]

# (changes to a valid model meta, the exact error message after "<file>: model spend: config.meta.featuremart")
META_CASES = [
    ({"timestamp": ["event_ts"]}, ".timestamp: expected a string, got a list ['event_ts']"),
    ({"timestamp": ""}, ".timestamp: must not be empty"),
    ({"online": "false"}, ".online: expected true or false, got a string 'false' (quoted: write it without quotes)"),
    ({"ttl": "9999999999d"}, ".ttl: '9999999999d' is too long a duration: the longest ttl is 36500d (100 years)"),
    ({"ttl": "0s"}, ".ttl: a ttl of '0s' would expire every value as soon as it is written (and delete every key of "
     "the view); use at least 1s"),
    ({"ttl": 7}, ".ttl: expected a duration such as 30d, 12h, 90m or 2w, got a number 7"),
    ({"ttl": "7 dayz"}, ".ttl: '7 dayz' is not a duration: write a whole number and a unit, e.g. 30d, 12h, 90m, 2w"),
    ({"entity": 5}, ".entity: expected a name or a list of names, got a number 5"),
    ({"entity": []}, ".entity: must not be empty"),
    ({"entity": {"customer": 1}}, ".entity: expected a name or a list of names, got a mapping {'customer': 1}"),
    ({"entity": ["customer", "customer"]}, ".entity: names customer more than once; list each entity once"),
    ({"tags": [1]}, ".tags[0]: expected a string, got a number 1"),
    ({"tags": {"a": 1}}, ".tags: expected a name or a list of names, got a mapping {'a': 1}"),
    ({"owner": ["a", "b"]}, ".owner: expected a string, got a list ['a', 'b']"),
    ({"tier": 1}, ".tier: expected a string, got a number 1"),
    ({"freshness": "daily"}, ".freshness: expected a mapping (key: value), got a string 'daily'"),
    ({"freshness": {"warn_after": {"count": 2}}}, ".freshness.warn_after.period: required: minute, hour or day, as in "
     "{count: 2, period: day}"),
    ({"changed_at": True}, ".changed_at: expected a string, got a boolean True"),
    ({"max_delete_fraction": -0.1}, ".max_delete_fraction: must be at least 0, got a number -0.1"),
    ({"max_delete_fraction": "half"}, ".max_delete_fraction: expected a number, got a string 'half'"),
    ({"tll": "7d"}, ".tll: unknown key; did you mean 'ttl'? (allowed: entity, timestamp, ttl, online, owner, tier, "
     "tags, freshness, changed_at, max_delete_fraction)"),
]


def test_at_least_forty_variants():
    assert len(FEATURES_CASES) + len(VARS_CASES) + len(META_CASES) >= 40


def test_a_tier_with_nothing_after_it_takes_every_default(tmp_path):
    (tmp_path / "features.yml").write_text("tiers:\n  bronze:\n")
    assert load_features_yml(tmp_path, VARS).tiers["bronze"].online is True


def test_features_yml_not_utf8(tmp_path):
    (tmp_path / "features.yml").write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"features.yml cannot be read as UTF-8 text .*; save it as UTF-8"):
        load_features_yml(tmp_path, VARS)


@pytest.mark.parametrize("text,message", FEATURES_CASES, ids=[c[0][:40] for c in FEATURES_CASES])
def test_features_yml_shapes(tmp_path, text, message):
    (tmp_path / "features.yml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_features_yml(tmp_path, VARS)
    assert str(exc.value) == message


@pytest.mark.parametrize("variables,message", VARS_CASES, ids=[str(c[0])[:40] for c in VARS_CASES])
def test_dbt_vars_shapes(tmp_path, variables, message):
    (tmp_path / "features.yml").write_text("version: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_features_yml(tmp_path, variables)
    assert str(exc.value) == message


@pytest.mark.parametrize("change,message", META_CASES, ids=[str(c[0])[:40] for c in META_CASES])
def test_model_meta_shapes(tmp_path, change, message):
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    config = load_features_yml(tmp_path, VARS)
    with pytest.raises(ValidationError) as exc:
        build(tmp_path, config, [model_node("spend", {**GOOD, **change})])
    assert exc.value.problems == [EXPECT_VIEW + message]


def test_column_meta_shapes(tmp_path):
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    config = load_features_yml(tmp_path, VARS)
    columns = {"spend_7d": {"name": "spend_7d", "config": {"meta": {"featuremart": {"feature": "false"}}}},
               "n_7d": {"name": "n_7d", "config": {"meta": {"featuremart": {"featur": False}}}}}
    with pytest.raises(ValidationError) as exc:
        build(tmp_path, config, [model_node("spend", GOOD, columns)])
    assert exc.value.problems == [
        "models/spend.yml: model spend: columns.spend_7d.config.meta.featuremart.feature: expected true or false, "
        "got a string 'false' (quoted: write it without quotes)",
        "models/spend.yml: model spend: columns.n_7d.config.meta.featuremart.featur: unknown key; did you mean "
        "'feature'? (allowed: feature)",
    ]


def test_meta_not_a_mapping(tmp_path):
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    config = load_features_yml(tmp_path, VARS)
    node = model_node("spend", GOOD)
    node["config"]["meta"]["featuremart"] = ["customer"]
    with pytest.raises(ValidationError) as exc:
        build(tmp_path, config, [node])
    assert exc.value.problems == ["models/spend.yml: model spend: config.meta.featuremart: expected a mapping "
                                  "(entity, timestamp, ttl, ...), got a list ['customer']"]


def test_a_wrong_key_does_not_hide_the_others(tmp_path):
    """A wrong shape and an unknown tier in one meta block: both reported in one run."""
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    config = load_features_yml(tmp_path, VARS)
    with pytest.raises(ValidationError) as exc:
        build(tmp_path, config, [model_node("spend", {**GOOD, "online": "yes", "tier": "platinum"})])
    assert len(exc.value.problems) == 2 and "unknown tier 'platinum'" in exc.value.problems[1]


def test_one_tag_as_a_string_is_one_tag(tmp_path):
    """`tags: payments` is one tag, as dbt reads its own `tags:` (not split into letters)."""
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    config = load_features_yml(tmp_path, VARS)
    view = build(tmp_path, config, [model_node("spend", {**GOOD, "tags": "payments"})]).view("spend")
    assert view.tags == ("payments",)


def test_ttl_is_shown_as_written(tmp_path):
    (tmp_path / "features.yml").write_text(FEATURES_YML)
    config = load_features_yml(tmp_path, {**VARS, "featuremart_default_ttl": "7 days"})
    registry = build(tmp_path, config, [model_node("spend", {**GOOD, "ttl": "14d"}),
                                        model_node("other", {k: v for k, v in GOOD.items() if k != "ttl"})])
    assert registry.view("spend").ttl_label == "14d" and registry.view("other").ttl_label == "7 days"
    from featuremart.registry import Registry

    again = Registry.from_snapshot(registry.to_snapshot())
    assert again.view("spend").ttl_label == "14d"


# -- the real CLI ----------------------------------------------------------------------------------------------
def featuremart(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("featuremart")), *args, "--project-dir", str(project),
           "--profiles-dir", str(project)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def small_project(tmp_path: Path, features_yml: str, variables: dict | None = None) -> Path:
    """A dbt project directory with the reference profile, `features.yml` and these vars (nothing built)."""
    shutil.copy2(ROOT / "profiles.yml", tmp_path / "profiles.yml")
    project = yaml.safe_load((ROOT / "dbt_project.yml").read_text())
    project["vars"] = VARS if variables is None else variables
    (tmp_path / "dbt_project.yml").write_text(yaml.safe_dump(project))
    (tmp_path / "features.yml").write_text(features_yml)
    return tmp_path


CLI_CASES = [FEATURES_CASES[0], FEATURES_CASES[4], FEATURES_CASES[12], FEATURES_CASES[15], FEATURES_CASES[25]]


@pytest.mark.parametrize("text,message", CLI_CASES, ids=[c[0][:40] for c in CLI_CASES])
def test_validate_cli_features_yml(tmp_path, text, message):
    proc = featuremart(small_project(tmp_path, text), "validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip() == f"Error: {message}"


@pytest.mark.parametrize("variables,message", [VARS_CASES[0], VARS_CASES[3], VARS_CASES[13]])
def test_validate_cli_vars(tmp_path, variables, message):
    proc = featuremart(small_project(tmp_path, "version: 1\n", variables), "validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip() == f"Error: {message}"


@pytest.mark.integration
def test_validate_cli_model_meta(project):
    """Hostile meta written in a model's YAML, parsed by real dbt, then `featuremart validate`: one line each."""
    path = project / "models" / "features" / "customer_spend.yml"
    spec = yaml.safe_load(path.read_text())
    meta = spec["models"][0]["config"]["meta"]["featuremart"]
    meta.update({"timestamp": ["event_ts"], "tags": "payments", "online": "false", "tll": "7d"})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    dbt(project, "parse")
    proc = featuremart(project, "validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    where = "models/features/customer_spend.yml: model customer_spend: config.meta.featuremart"
    lines = [line.strip() for line in proc.stderr.splitlines()]
    assert lines[0] == "3 error(s) in feature metadata:"
    assert lines[1:] == [
        f"✗ {where}.timestamp: expected a string, got a list ['event_ts']",
        f"✗ {where}.online: expected true or false, got a string 'false' (quoted: write it without quotes)",
        f"✗ {where}.tll: unknown key; did you mean 'ttl'? (allowed: entity, timestamp, ttl, online, owner, tier, "
        "tags, freshness, changed_at, max_delete_fraction)",
    ]


@pytest.mark.integration
def test_list_and_describe_show_the_ttl_as_written(project):
    """A ttl of 14d is shown as 14d (it was shown as 2w), by list, describe and from the published snapshot."""
    path = project / "models" / "features" / "customer_spend.yml"
    path.write_text(path.read_text().replace("ttl: 30d", "ttl: 14d"))
    dbt(project, "parse")
    listed = featuremart(project, "list", env={"COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    assert "ttl 14d" in listed.stdout and "2w" not in listed.stdout
    described = featuremart(project, "describe", "customer_spend", env={"COLUMNS": "200"})
    assert described.returncode == 0, described.stderr
    assert [line.split() for line in described.stdout.splitlines() if line.startswith("ttl ")] == [["ttl", "14d"]]


def test_validate_cli_reports_every_problem_at_once(tmp_path):
    variables = {"featuremart_entities": {"customer": ["customer_id"]}, "featuremart_default_ttl": "0s"}
    proc = featuremart(small_project(tmp_path, "version: 2\ndefaults: {online: 'yes'}\n", variables), "validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line.strip() for line in proc.stderr.splitlines()] == [
        "4 error(s) in features.yml and the featuremart dbt vars:",
        "✗ features.yml: version: expected 1, got a number 2",
        "✗ features.yml: defaults.online: expected true or false, got a string 'yes' (quoted: write it without quotes)",
        "✗ dbt_project.yml: vars.featuremart_entities.customer: expected a mapping (key: value), got a list "
        "['customer_id']",
        "✗ dbt_project.yml: vars.featuremart_default_ttl: a ttl of '0s' would expire every value as soon as it is "
        "written (and delete every key of the view); use at least 1s",
    ]
