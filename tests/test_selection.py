"""dbt's node selection, not a look-alike: featuremart picks the feature views among what `dbt ls` picks.

A copy of the built reference project gets dbt tags, a selectors.yml and a production state directory (then one
model changes, for `state:modified`). Real `dbt ls --resource-type model` (dbt's own runner, in one process for
every selector) is the oracle; featuremart selects in-process over target/manifest.json. Real redis-server for
the sync test.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import redis
from rich.console import Console

from featuremart import FeatureStore
from featuremart.cli import main
from featuremart.errors import SelectionError
from tests.conftest import dbt

pytestmark = pytest.mark.integration

SELECTORS_YML = """\
selectors:
  - name: gold_views
    definition:
      method: config.meta.featuremart.tier
      value: gold
  - name: risk_or_spend
    definition:
      union:
        - method: tag
          value: risk
        - method: fqn
          value: customer_spend
"""

#: (--select, --exclude, --selector, use --state): each is run through `dbt ls` and through featuremart.
CASES = [
    (["customer_spend"], [], None, False),
    (["custmer_spend"], [], None, False),  # a typo: dbt warns and selects nothing
    (["tag:risk tier:gold"], [], None, False),  # tier: is not dbt grammar
    (["tag:risk config.meta.featuremart.tier:gold"], [], None, False),  # a union
    (["customer_spend,customer_profile"], [], None, False),  # an intersection of two models: nothing
    (["tag:risk,config.meta.featuremart.tier:gold"], [], None, False),  # an intersection
    (["+exposure:fraud_model"], [], None, False),
    (["@customer_spend"], [], None, False),
    (["stg_transactions+"], ["merchant_*"], None, False),
    (["path:models/features"], ["customer_*"], None, False),
    (["config.meta.featuremart.tier:gold"], [], None, False),
    (["config.meta.featuremart.tags:payments"], [], None, False),
    (["fraud_training_set"], [], None, False),  # a model, not a feature view
    ([], [], "gold_views", False),
    ([], [], "risk_or_spend", False),
    (["state:modified"], [], None, True),
]

DBT_LS = """\
import json, sys
from dbt.cli.main import dbtRunner
project, target_path, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = []
for select, exclude, selector, state in cases:
    args = ["ls", "--resource-type", "model", "--output", "name", "--project-dir", project, "--profiles-dir",
            project, "--target-path", target_path, "--quiet"]
    args += ["--select", *select] if select else []
    args += ["--exclude", *exclude] if exclude else []
    args += ["--selector", selector] if selector else []
    args += ["--state", state] if state else []
    result = dbtRunner().invoke(args)
    out.append(sorted(result.result) if result.success else None)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def selection_project(tmp_path_factory, built_project):
    """The built project with dbt tags on two models, selectors.yml, a state dir, and then one model changed."""
    dest = tmp_path_factory.mktemp("selection") / "project"
    # Not target/featuremart: other tests sync the shared build, and its sync state is not this project's.
    shutil.copytree(built_project, dest, ignore=shutil.ignore_patterns("logs", "featuremart"))
    for model in ("merchant_risk", "customer_profile"):
        yml = dest / "models" / "features" / f"{model}.yml"
        text = yml.read_text().replace("    config:\n      meta:", "    config:\n      tags: [risk]\n      meta:", 1)
        yml.write_text(text)
    (dest / "selectors.yml").write_text(SELECTORS_YML)
    dbt(dest, "parse")
    state = dest / "prod_state"
    state.mkdir()
    shutil.copy2(dest / "target" / "manifest.json", state / "manifest.json")
    sql = dest / "models" / "features" / "merchant_risk.sql"
    sql.write_text(sql.read_text() + "\n-- changed after production's run\n")
    dbt(dest, "parse")  # target/manifest.json: what the files say, read by featuremart and by dbt ls alike
    return dest


@pytest.fixture(scope="module")
def dbt_ls(selection_project, tmp_path_factory):
    """What real `dbt ls --resource-type model` selects for each case (None where dbt refuses the selector)."""
    cases = [[s, e, sel, str(selection_project / "prod_state") if st else None] for s, e, sel, st in CASES]
    proc = subprocess.run([sys.executable, "-c", DBT_LS, str(selection_project),
                           str(tmp_path_factory.mktemp("dbt_ls_target")), json.dumps(cases)],
                          capture_output=True, text=True, cwd=selection_project,
                          env={**__import__("os").environ, "DO_NOT_TRACK": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(CASES)), ids=[" ".join(c[0] + c[1]) or c[2] for c in CASES])
def test_featuremart_selects_what_dbt_ls_selects(selection_project, dbt_ls, case):
    select, exclude, selector, use_state = CASES[case]
    state = selection_project / "prod_state" if use_state else None
    store = FeatureStore(selection_project)
    views = set(store.registry.views)
    expected = None if dbt_ls[case] is None else sorted(set(dbt_ls[case]) & views)
    if expected:
        for online_only in (False, True):
            got = store.select(select, exclude, selector, state, online_only=online_only)
            assert [v.name for v in got] == expected
    else:  # dbt selects no feature view (or refuses the selector): featuremart says so, naming it
        with pytest.raises(SelectionError) as error:
            store.select(select, exclude, selector, state)
        named = " ".join(select) or selector
        assert named in str(error.value)
        if select == ["custmer_spend"]:
            assert "'custmer_spend' matches no node" in str(error.value)
        if "tier:gold" in named and "config" not in named:
            assert "config.meta.featuremart.tier:<tier>" in str(error.value)


def test_the_cases_cover_what_matters(dbt_ls):
    """The oracle is not vacuous: some cases select several feature views, some none, one is refused."""
    selected = [set(names or ()) for names in dbt_ls]
    assert dbt_ls[2] is None  # 'tier:' refused by dbt
    assert selected[6] >= {"customer_spend", "merchant_risk", "customer_merchant_pair", "stg_transactions"}
    assert selected[15] == {"merchant_risk"}  # state:modified
    assert selected[1] == set() and selected[4] == set()


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), console=Console(file=out, width=120, color_system=None))
    return code, out.getvalue()


def test_sync_publishes_exactly_the_views_dbt_selects(selection_project, redis_url, monkeypatch, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(selection_project, project)
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    monkeypatch.chdir(project)
    client = redis.Redis.from_url(redis_url)

    code, out = run_cli("sync", "--select", "custmer_spend")  # a typo: exit 1, naming it, nothing written
    assert code == 1 and "'custmer_spend' matches no node" in out
    assert client.dbsize() == 0

    code, out = run_cli("sync", "--select", "+exposure:fraud_model", "--exclude", "merchant_risk", "--json")
    record = json.loads(out)
    assert code == 0, out
    assert {v["view"] for v in record["views"]} == {"customer_spend", "customer_merchant_pair"}
    assert all(v["status"] == "synced" and v["inserted"] > 0 for v in record["views"]), out
    published = {key.rsplit(b":", 2)[1] for key in client.scan_iter(match="fm:{*")}  # fm:{keys}:view:version
    assert published == {b"customer_spend", b"customer_merchant_pair"}
    reader = FeatureStore.from_url(redis_url)
    assert set(reader.registry.views) == {"customer_spend", "customer_merchant_pair"}


def test_list_takes_dbts_selection(selection_project, monkeypatch):
    monkeypatch.chdir(selection_project)
    code, out = run_cli("list", "--select", "tag:risk")
    assert code == 0
    titles = [line.split()[0] for line in out.splitlines() if "  entity " in line]  # one title line per view
    assert titles == ["customer_profile", "merchant_risk"]
    assert "fraud_model" in out and "recommender" in out  # the services of the listed views
    code, out = run_cli("list", "--selector", "gold_views", "--exclude", "merchant_risk")
    assert code == 1 and "--selector cannot be combined" in out
    code, out = run_cli("list", "--select", "state:modified", "--state", str(selection_project / "prod_state"))
    assert code == 0 and [line.split()[0] for line in out.splitlines() if "  entity " in line] == ["merchant_risk"]


def test_a_default_selector_applies_when_nothing_is_selected(selection_project, dbt_ls, tmp_path, monkeypatch):
    """As in dbt: selectors.yml's `default: true` selector is the selection of a bare `list` or `sync`."""
    project = tmp_path / "project"
    shutil.copytree(selection_project, project)
    (project / "selectors.yml").write_text(SELECTORS_YML.replace("  - name: gold_views\n",
                                                                 "  - name: gold_views\n    default: true\n"))
    monkeypatch.chdir(project)
    code, out = run_cli("list")
    gold = sorted(set(dbt_ls[CASES.index(([], [], "gold_views", False))]) & set(FeatureStore(project).registry.views))
    assert code == 0 and [line.split()[0] for line in out.splitlines() if "  entity " in line] == gold
    assert len(gold) == 3
