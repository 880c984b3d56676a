"""featuremart.dbtcore: dbt's own loading of projects and profiles, `validate` that parses what the user wrote,
and the cache of compiled training sets. Real dbt on DuckDB; Postgres where it matters."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from rich.console import Console

from featuremart.cli import main
from featuremart.config import load_dbt_project
from featuremart.dbtcore import COMPILE_TARGET_DIR, PARSE_TARGET_DIR
from featuremart.errors import ConfigError
from featuremart.training import compile_training_set
from featuremart.warehouse import open_warehouse
from tests.conftest import copy_project

#: A password dbt's profiles.yml must pass through untouched: YAML quotes, a comment sign, Jinja braces.
PASSWORD = "p\"q'r#s {{ t }} %u\\v"


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), console=Console(file=out, width=120, color_system=None))
    return code, out.getvalue()


@pytest.fixture
def bare_project(tmp_path, monkeypatch):
    """The reference project's dbt files (unbuilt), run from an unrelated working directory."""
    for name in ("FEATUREMART_TARGET", "FEATUREMART_DUCKDB_PATH", "DBT_PROFILES_DIR", "DBT_TARGET_PATH",
                 "DBT_TARGET", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return copy_project(tmp_path / "project")


def test_a_password_with_quotes_hash_and_braces_loads_as_written(bare_project, monkeypatch):
    monkeypatch.setenv("FEATUREMART_TARGET", "postgres")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    project = load_dbt_project(bare_project)
    assert project.target_name == "postgres" and project.adapter_type == "postgres"
    assert project.target["password"] == PASSWORD
    assert project.target["port"] == 5432  # `| as_number`, rendered by dbt


@pytest.mark.postgres
def test_the_adapter_connects_with_such_a_password(bare_project, monkeypatch, postgres_dsn):
    """A role whose password holds every awkward character: dbt's adapter connects with it."""
    import psycopg2

    role = f"fm_pw_{os.getpid()}"
    with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
        cursor.execute(f'drop role if exists "{role}"')
        cursor.execute(f"create role \"{role}\" login password %s", (PASSWORD,))
    connection.close()
    try:
        monkeypatch.setenv("FEATUREMART_TARGET", "postgres")
        monkeypatch.setenv("PGUSER", role)
        monkeypatch.setenv("PGPASSWORD", PASSWORD)
        monkeypatch.setenv("PGDATABASE", psycopg2.extensions.parse_dsn(postgres_dsn).get("dbname", "postgres"))
        with open_warehouse(load_dbt_project(bare_project)) as warehouse:
            assert warehouse.query("select current_user as u").column("u").to_pylist() == [role]
    finally:
        with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
            cursor.execute(f'drop role if exists "{role}"')
        connection.close()


def test_dbt_loading_rules_apply(bare_project, monkeypatch, tmp_path):
    project = load_dbt_project(bare_project)
    assert (project.name, project.target_name, project.profiles_dir) == ("featuremart", "dev", bare_project)
    assert project.target["path"] == "target/featuremart.duckdb"  # env_var's default
    assert project.target_dir == bare_project / "target"
    assert project.vars["featuremart_default_ttl"] == "30d" and "customer" in project.vars["featuremart_entities"]

    monkeypatch.setenv("FEATUREMART_DUCKDB_PATH", "elsewhere.duckdb")
    assert load_dbt_project(bare_project).target["path"] == "elsewhere.duckdb"

    monkeypatch.setenv("DBT_TARGET_PATH", "build_out")
    assert load_dbt_project(bare_project).target_dir == bare_project / "build_out"

    monkeypatch.setenv("DBT_TARGET", "postgres")
    assert load_dbt_project(bare_project).target_name == "postgres"
    assert load_dbt_project(bare_project, target="dev").target_name == "dev"  # --target wins over DBT_TARGET

    other = tmp_path / "profiles"
    other.mkdir()
    (other / "profiles.yml").write_text(
        "featuremart_reference:\n  target: ci\n  outputs:\n    ci: {type: duckdb, path: ci.duckdb, threads: 1}\n")
    monkeypatch.delenv("DBT_TARGET")
    monkeypatch.setenv("DBT_PROFILES_DIR", str(other))
    project = load_dbt_project(bare_project)
    assert (project.profiles_dir, project.target_name, project.target["path"]) == (other, "ci", "ci.duckdb")

    project = load_dbt_project(bare_project, vars="{featuremart_default_ttl: 7d, extra: 1}")
    assert project.vars["featuremart_default_ttl"] == "7d" and project.vars["extra"] == 1

    # vars as a root-project model's var() returns them: a string is rendered, scoped vars override global ones
    path = bare_project / "dbt_project.yml"
    raw = yaml.safe_load(path.read_text())
    raw["vars"].update({"fm_probe": "{{ env_var('FM_PROBE', 'fallback') }}", "featuremart": {"fm_scoped": 2},
                        "fm_scoped": 1})
    path.write_text(yaml.safe_dump(raw))
    assert load_dbt_project(bare_project).vars["fm_probe"] == "fallback"
    monkeypatch.setenv("FM_PROBE", "from the environment")
    project = load_dbt_project(bare_project)
    assert project.vars["fm_probe"] == "from the environment" and project.vars["fm_scoped"] == 2


@pytest.mark.parametrize("file, text, expected", [
    ("profiles.yml", "featuremart_reference:\n  target: dev\n  outputs:\n    dev: {type: duckdb, path: [unclosed\n",
     "profiles.yml: "),
    ("profiles.yml", "featuremart_reference:\n  target: nope\n  outputs:\n    dev: {type: duckdb, path: x.duckdb}\n",
     "does not have a target named 'nope'"),
    ("dbt_project.yml", "name: featuremart\nconfig-version: 2\nprofile: featuremart_reference\nversion: [1]\n",
     "dbt_project.yml: "),
])
def test_dbt_errors_are_one_line_config_errors(bare_project, file, text, expected):
    (bare_project / file).write_text(text)
    with pytest.raises(ConfigError) as error:
        load_dbt_project(bare_project)
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert message.startswith(str(bare_project / file)) or file == "profiles.yml"
    code, out = run_cli("list", "--project-dir", str(bare_project))
    assert code == 1 and "Traceback" not in out and expected in " ".join(out.split())


def test_validate_checks_an_edited_yaml_before_the_next_build(project, monkeypatch):
    """After `dbt build`, a YAML edit to an unknown entity: validate parses the project and fails, naming it,
    without touching target/ (whose manifest and run results the sync gate reads)."""
    monkeypatch.chdir(project)
    code, out = run_cli("validate")
    assert code == 0 and "OK: 5 feature views" in out
    assert not (project / "target" / PARSE_TARGET_DIR).exists()  # nothing changed: no parse

    artifacts = {name: (project / "target" / name).read_bytes() for name in ("manifest.json", "run_results.json")}
    yml = project / "models" / "features" / "merchant_risk.yml"
    yml.write_text(yml.read_text().replace("entity: merchant", "entity: merchnt"))
    code, out = run_cli("validate")
    assert code == 1, out
    assert "models/features/merchant_risk.yml: model merchant_risk: unknown entity 'merchnt'" in " ".join(out.split())
    assert {name: (project / "target" / name).read_bytes() for name in artifacts} == artifacts
    assert (project / "target" / PARSE_TARGET_DIR / "manifest.json").exists()

    yml.write_text(yml.read_text().replace("entity: merchnt", "entity: merchant"))
    code, out = run_cli("validate")
    assert code == 0 and "validated what dbt parses from your files now" in " ".join(out.split())


def test_validate_reports_a_project_dbt_cannot_parse(project, monkeypatch):
    monkeypatch.chdir(project)
    sql = project / "models" / "features" / "customer_spend.sql"
    sql.write_text(sql.read_text() + "\n{{ ref('no_such_model') }}\n")
    code, out = run_cli("validate")
    assert code == 1 and "dbt could not parse the project" in out and "no_such_model" in out
    assert "Traceback" not in out


def test_compiled_training_sets_are_cached_per_manifest_and_request(project):
    dbt_project = load_dbt_project(project)
    spine = pa.table({"customer_id": ["C0000001"], "merchant_id": ["M00001"],
                      "label_ts": pa.array([0], pa.timestamp("us"))})
    cache = project / "target" / COMPILE_TARGET_DIR / "cache"
    with open_warehouse(dbt_project) as warehouse:
        first, _ = compile_training_set(dbt_project, warehouse, spine, "label_ts", service="fraud_model")
        assert len(list(cache.glob("*.sql"))) == 1
        again, _ = compile_training_set(dbt_project, warehouse, spine, "label_ts", service="fraud_model")
        assert again.sql == first.sql and again.compile_seconds < first.compile_seconds / 5
        other, _ = compile_training_set(dbt_project, warehouse, spine, "label_ts",
                                        features=["customer_spend.spend_7d"])
        assert other.sql != first.sql and len(list(cache.glob("*.sql"))) == 2

        macro = project / "macros" / "zz_probe.sql"  # a project file changed: dbt compiles again
        macro.write_text("{% macro zz_probe() %}1{% endmacro %}\n")
        compile_training_set(dbt_project, warehouse, spine, "label_ts", service="fraud_model")
        assert len(list(cache.glob("*.sql"))) == 3

        # A spine dbt does not build may change its columns without a new manifest: never cached.
        compile_training_set(dbt_project, warehouse, "select * from main.fraud_labels", "label_ts",
                             service="fraud_model")
        assert len(list(cache.glob("*.sql"))) == 3


def test_a_cached_training_set_runs_no_dbt_and_keeps_the_warehouse_open(project, monkeypatch):
    """A second identical request takes its SQL from the cache: dbt neither compiles nor reloads the project
    (that cost 0.3 s a call), and the DuckDB connection stays open; the same table comes back. A changed
    dbt_project.yml is read again: a folder it adds counts among the project files."""
    import featuremart.dbtcore as dbtcore
    from featuremart.training import training_set

    dbt_project = load_dbt_project(project)
    with open_warehouse(dbt_project) as warehouse:
        first = training_set(dbt_project, warehouse, "fraud_labels", "label_ts", service="fraud_model")
        con = warehouse.con

        def no_dbt(*args, **kwargs):
            raise AssertionError("dbt ran for a cached training set")

        with monkeypatch.context() as patch:
            patch.setattr(dbtcore, "_invoke", no_dbt)
            patch.setattr(dbtcore, "_runtime_config", no_dbt)
            again = training_set(dbt_project, warehouse, "fraud_labels", "label_ts", service="fraud_model")
        assert again.equals(first) and warehouse.con is con

    (project / "more").mkdir()
    (project / "more" / "zz_model.sql").write_text("select 1 as one\n")
    config = project / "dbt_project.yml"
    config.write_text(config.read_text().replace('model-paths: ["models"]', 'model-paths: ["models", "more"]'))
    assert project / "more" / "zz_model.sql" in dbtcore.project_files(dbt_project)


def test_the_online_read_path_does_not_import_dbt():
    code = ("import sys, featuremart, featuremart.config, featuremart.dbtcore, featuremart.online.reader, "
            "featuremart.server; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'dbt')))")
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_bad_vars_are_one_clear_error(bare_project, capfd):
    code, out = run_cli("list", "--project-dir", str(bare_project), "--vars", "[1]")
    assert code == 1 and out.startswith("Error: --vars '[1]': ") and "YAML dictionary" in out
    assert capfd.readouterr().out == ""  # dbt's own log line stays quiet: the error is said once


def test_the_loaded_project_cache_follows_every_input(bare_project, monkeypatch, tmp_path):
    """dbt's loader costs seconds a process, so a load is cached keyed by everything it reads. A stale entry is
    injected after each load (its target path marked): the same inputs get the mark back (the cache is used),
    and each changed input (an env var the profile reads, DBT_* variables, profiles.yml and dbt_project.yml
    edits, --vars, --target, the working directory) gets dbt's fresh answer instead."""
    monkeypatch.setenv("FEATUREMART_CACHE_DIR", str(tmp_path / "cache"))
    entries = tmp_path / "cache" / "projects"

    def mark_cached() -> None:
        for entry in entries.glob("*.json"):
            loaded = json.loads(entry.read_text())
            loaded["target"]["path"] = "CACHED"
            entry.write_text(json.dumps(loaded))

    def edit(path: Path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    assert load_dbt_project(bare_project).target["path"] == "target/featuremart.duckdb"
    mark_cached()
    assert load_dbt_project(bare_project).target["path"] == "CACHED"

    vars_yaml = "{featuremart_default_ttl: 7d}"
    changes = [
        (lambda: monkeypatch.setenv("FEATUREMART_DUCKDB_PATH", "elsewhere.duckdb"), {},
         lambda p: p.target["path"] == "elsewhere.duckdb"),
        (lambda: monkeypatch.setenv("DBT_TARGET_PATH", "build_out"), {},
         lambda p: p.target_dir == bare_project / "build_out"),
        (lambda: edit(bare_project / "profiles.yml", "      threads: 2\n", "      threads: 2\n      schema: edited\n"),
         {}, lambda p: p.target["schema"] == "edited"),
        (lambda: edit(bare_project / "dbt_project.yml", "featuremart_default_ttl: 30d", "featuremart_default_ttl: 9d"),
         {}, lambda p: p.vars["featuremart_default_ttl"] == "9d"),
        (lambda: None, {"vars": vars_yaml}, lambda p: p.vars["featuremart_default_ttl"] == "7d"),
        (lambda: None, {"target": "postgres"}, lambda p: p.target_name == "postgres"),
        (lambda: monkeypatch.chdir(bare_project), {}, lambda p: p.target["path"] == "elsewhere.duckdb"),
    ]
    for change, options, fresh in changes:
        change()
        project = load_dbt_project(bare_project, **options)
        assert project.target.get("path") != "CACHED" and fresh(project), (options, project)
        if project.adapter_type == "duckdb":
            mark_cached()
            assert load_dbt_project(bare_project, **options).target["path"] == "CACHED"

    # A fresh process with a cached load imports no dbt at all (that import was most of every command's start).
    monkeypatch.chdir(tmp_path)
    code = ("import sys; from pathlib import Path; from featuremart.dbtcore import load_dbt_project; "
            f"p = load_dbt_project(Path({str(bare_project)!r})); "
            "print(p.target['path'], sorted({m.split('.')[0] for m in sys.modules if m.startswith('dbt')}))")
    env = {**os.environ, "FEATUREMART_CACHE_DIR": str(tmp_path / "fresh_cache")}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout.split()[0] == "elsewhere.duckdb" and "dbt" in runs[0].stdout  # dbt loaded, then cached
    assert runs[1].stdout == "elsewhere.duckdb []\n"


def test_a_target_holding_a_secret_is_never_cached(bare_project, monkeypatch, tmp_path):
    """A password (here from PGPASSWORD, as a profile should take it) is not written to the cache: such a
    target is loaded by dbt every time, and nothing under the cache directory holds it."""
    monkeypatch.setenv("FEATUREMART_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATUREMART_TARGET", "postgres")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    for _ in range(2):
        assert load_dbt_project(bare_project).target["password"] == PASSWORD
    written = [p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not any(PASSWORD in text for text in written)
    assert not written
    monkeypatch.setenv("PGPASSWORD", "")  # no password (trust auth): cached like any other target
    load_dbt_project(bare_project)
    assert len(list((tmp_path / "cache" / "projects").glob("*.json"))) == 1
