"""The docs stay true: every CLI command and option is in the README (datasette's habit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from featuremart.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_is_documented():
    missing = []
    for name, sub in subcommands().items():
        if f"featuremart {name}" not in README:
            missing.append(name)
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and f"`{flag}`" not in README:
                    missing.append(f"{name} {flag}")
    assert not missing, f"not in README.md: {missing}"


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in README and "make test" in ci
