"""The docs stay true: every CLI command, option, metadata key and HTTP endpoint is documented in the README
or docs/*.md (datasette's habit), and every relative link in them resolves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from featuremart import registry
from featuremart.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_in_the_readme_and_every_option_documented():
    missing = []
    for name, sub in subcommands().items():
        if f"featuremart {name}" not in README:
            missing.append(name)
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and f"`{flag}`" not in DOCS:
                    missing.append(f"{name} {flag}")
    assert not missing, f"not in README.md or docs/*.md: {missing}"


def features_yml_keys() -> set[str]:
    """Every key the reference features.yml uses, as `section.key` (a name the user chooses, such as a tier's,
    is written `<name>`), and the dbt vars that hold the entities and the default ttl."""
    raw = yaml.safe_load((ROOT / "features.yml").read_text())
    keys = set(raw)
    for section, value in raw.items():
        if section in ("entities", "tiers"):
            keys |= {f"{section}.<name>.{key}" for spec in value.values() for key in spec or {}}
        elif isinstance(value, dict):
            keys |= {f"{section}.{key}" for key in value}
    return keys | {"featuremart_entities", "featuremart_default_ttl"}


def _documented_key(key: str) -> bool:
    """`a.b` is documented as `a.b...` or, in a table of its section, as `b`; a section `a` as `a...`."""
    return f"`{key}" in DOCS or ("." in key and f"`{key.rsplit('.', 1)[-1]}`" in DOCS)


def test_every_metadata_key_is_documented():
    keys = [*registry.VIEW_META_KEYS, *registry.COLUMN_META_KEYS, "features", *sorted(features_yml_keys())]
    missing = [key for key in keys if not _documented_key(key)]
    assert not missing, f"metadata keys not in README.md or docs/*.md: {missing}"


def test_every_http_endpoint_is_documented(redis_url):
    from featuremart.server import create_app
    from featuremart.store import FeatureStore

    with FeatureStore.from_url(redis_url) as store:
        app = create_app(store.reader)
        routes = getattr(app, "app", app).routes
    endpoints = {f"{method} {route.path}" for route in routes for method in route.methods if method != "HEAD"}
    assert "POST /features" in endpoints  # the introspection found the routes
    missing = sorted(endpoint for endpoint in endpoints if endpoint not in DOCS)
    assert not missing, f"endpoints not in README.md or docs/*.md: {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked})")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in README and "make test" in ci
