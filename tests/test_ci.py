"""CI runs every test: a missing PostgreSQL skips its tests on a laptop (with the reason) but fails CI.

Each case runs a small test file in a child pytest with this suite's conftest as a plugin, pointed at a
port where no PostgreSQL listens, and reads what the child reported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = '''
import pytest

def test_uses_the_fixture(postgres_dsn):
    assert postgres_dsn

def test_checks_by_itself():
    pytest.skip("PostgreSQL is not reachable (the test's own check)")
'''


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


def _child_pytest(tmp_path: Path, ci: str | None, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    full_env = {key: value for key, value in os.environ.items() if key != "CI"}
    full_env.update(env, PGHOST="127.0.0.1", PGPORT=str(_closed_port()))
    if ci is not None:
        full_env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:randomly", "-p", "no:cacheprovider",
               "-q", "-rA", "--rootdir", str(tmp_path), "--confcutdir", str(tmp_path), str(tmp_path)]
    return subprocess.run(command, cwd=ROOT, env={**full_env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)


def test_without_postgres_a_laptop_skips_with_the_reason(tmp_path: Path) -> None:
    result = _child_pytest(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout
    assert "no PostgreSQL server reachable at host=127.0.0.1" in result.stdout
    assert "set PGHOST/PGPORT/PGUSER/PGDATABASE" in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_without_postgres_ci_fails(tmp_path: Path, ci: str) -> None:
    result = _child_pytest(tmp_path, ci=ci)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped" not in result.stdout.splitlines()[-1]
    assert "1 failed" in result.stdout and "1 error" in result.stdout
    assert "CI=true, so this test must run, but: no PostgreSQL server reachable" in result.stdout
    assert "CI=true, so this test must run, but it was skipped: " in result.stdout
    assert "the test's own check" in result.stdout


def test_ci_fails_a_module_skipped_for_a_missing_dependency(tmp_path: Path) -> None:
    (tmp_path / "test_needs.py").write_text('import pytest\npytest.importorskip("no_such_module_fm")\n'
                                            "def test_x():\n    pass\n")
    laptop = _child_pytest(tmp_path, ci=None)
    assert laptop.returncode == 0 and "3 skipped" in laptop.stdout, laptop.stdout + laptop.stderr
    ci = _child_pytest(tmp_path, ci="true")
    assert ci.returncode != 0
    assert "CI=true, so this test must run, but it was skipped: " in ci.stdout
    assert "could not import 'no_such_module_fm'" in ci.stdout


def test_ci_false_is_a_laptop(tmp_path: Path) -> None:
    result = _child_pytest(tmp_path, ci="false")
    assert result.returncode == 0 and "2 skipped" in result.stdout, result.stdout + result.stderr


def test_ci_script_fails_loudly_when_postgres_does_not_answer() -> None:
    """`.ci/run` calls `.ci/postgres` before `make test`: here a port nothing listens on. (It tries to start
    the local clusters first; on a machine where they already run, that changes nothing.)"""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(_closed_port()), "PG_WAIT_SECONDS": "1"}
    result = subprocess.run([str(ROOT / ".ci" / "postgres")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "does not answer at 127.0.0.1:" in result.stderr
    assert "error: no PostgreSQL at 127.0.0.1:" in result.stderr and "cannot run" in result.stderr


def test_ci_runs_the_readme_test_command_after_checking_postgres_and_chromium() -> None:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-3:] == [".ci/postgres", ".ci/chromium", "make test"]
    assert 'export CI="${CI:-true}"' in lines
