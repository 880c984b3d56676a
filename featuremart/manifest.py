"""Read the dbt artifacts featuremart needs (manifest.json, run_results.json) into small dataclasses.

The manifest is the registry's source: no `apply` step, no second copy of definitions. Only the few fields we
use are read, as plain data, so that dbt internals are never imported and a new dbt version breaks loudly
(schema version check) rather than quietly.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from featuremart.errors import ArtifactError

#: Manifest schema versions this reader understands (dbt-core 1.8 to 1.11 write v12).
SUPPORTED_MANIFEST_SCHEMAS = (12,)
_SCHEMA_RE = re.compile(r"/manifest/v(\d+)\.json$")
_BUILD_HINT = "run `dbt build` in the project first"


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    data_type: str | None
    meta: dict[str, Any]  # the column's `featuremart` meta block


@dataclass(frozen=True)
class Model:
    unique_id: str
    name: str
    package: str
    sql_path: str  # original_file_path of the .sql file
    yaml_path: str | None  # the YAML file that describes it (dbt's patch_path)
    database: str | None
    schema: str
    identifier: str
    materialized: str
    description: str
    meta: dict[str, Any]  # the model's `featuremart` meta block; empty if it is not a feature view
    tags: tuple[str, ...]
    columns: dict[str, Column]
    depends_on: tuple[str, ...]
    checksum: str = ""  # dbt's checksum of the model's file: differs from the built one when the SQL changed


@dataclass(frozen=True)
class Test:
    unique_id: str
    name: str  # generic test name, e.g. "feature_keys_unique"
    namespace: str | None  # e.g. "featuremart"
    kwargs: dict[str, Any]
    attached_node: str | None


@dataclass(frozen=True)
class Exposure:
    unique_id: str
    name: str
    type: str
    description: str
    owner: str | None
    path: str
    meta: dict[str, Any]  # the exposure's `featuremart` meta block
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    unique_id: str
    name: str  # "source_name.table_name"
    relation: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    schema_version: int
    dbt_version: str
    generated_at: str
    adapter_type: str
    checksum: str  # sha256 of the file: identifies the build a sync published
    models: dict[str, Model]  # by unique_id
    tests: tuple[Test, ...]
    exposures: dict[str, Exposure]  # by name
    sources: dict[str, Source]  # by unique_id
    invocation_id: str = ""  # the dbt command that wrote this manifest
    project_name: str = ""  # the root dbt project's name (dbt_project.yml `name`)

    def model_named(self, name: str) -> Model | None:
        """The root project's model called `name` (dbt model names are unique within a project)."""
        for model in self.models.values():
            if model.name == name:
                return model
        return None

    def tests_on(self, unique_id: str) -> list[Test]:
        return [t for t in self.tests if t.attached_node == unique_id]


@dataclass(frozen=True)
class RunResult:
    unique_id: str
    status: str  # success | error | fail | warn | pass | skipped | ...
    message: str | None
    completed_at: datetime | None = None  # UTC (naive): when the node's last step finished


@dataclass(frozen=True)
class RunResults:
    path: Path
    generated_at: str
    command: str
    results: dict[str, RunResult] = field(default_factory=dict)
    invocation_id: str = ""
    empty: bool = False  # built with `--empty`: the models hold no rows


def _featuremart_meta(node: dict[str, Any]) -> dict[str, Any]:
    """The `featuremart` block of a node's meta; dbt >= 1.10 keeps it under config.meta, older under meta."""
    merged: dict[str, Any] = {}
    for meta in (node.get("meta") or {}, (node.get("config") or {}).get("meta") or {}):
        block = meta.get("featuremart")
        if isinstance(block, dict):
            merged.update(block)
        elif block is not None:
            merged["__invalid__"] = block
    return merged


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise ArtifactError(f"{path} not found: {_BUILD_HINT} (featuremart reads dbt's {what}).")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); {_BUILD_HINT} to rewrite it.") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} holds {json.dumps(raw)[:40]} where dbt writes its {what} (a JSON object); "
                            f"{_BUILD_HINT} to rewrite it.")
    return raw


def _entries(raw: dict[str, Any], key: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The `key` section of an artifact (uid -> node), checked to be a JSON object of JSON objects."""
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        raise ArtifactError(f"{path}: {key} is not a JSON object; {_BUILD_HINT} to rewrite it.")
    return list(section.items())


@contextmanager
def _entry(path: Path, what: str) -> Iterator[None]:
    """Turn a node that lacks what dbt always writes (a `name`, a `unique_id`) into one line naming it."""
    try:
        yield
    except KeyError as exc:
        raise ArtifactError(f"{path}: {what} has no {exc.args[0]!r}, which dbt always writes; {_BUILD_HINT} to "
                            "rewrite it.") from None
    except (TypeError, AttributeError, ValueError):
        raise ArtifactError(f"{path}: {what} is not shaped as dbt writes it; {_BUILD_HINT} to rewrite it.") from None


def load_manifest(target_dir: Path) -> Manifest:
    """Read `target_dir/manifest.json`, checking that its schema is one this version understands."""
    path = Path(target_dir) / "manifest.json"
    raw_bytes = path.read_bytes() if path.exists() else b""
    raw = _read_json(path, "manifest")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    schema_url = str(metadata.get("dbt_schema_version", ""))
    match = _SCHEMA_RE.search(schema_url)
    version = int(match.group(1)) if match else -1
    if version not in SUPPORTED_MANIFEST_SCHEMAS:
        supported = ", ".join(f"v{v}" for v in SUPPORTED_MANIFEST_SCHEMAS)
        raise ArtifactError(
            f"{path} has manifest schema {schema_url or 'unknown'!r} (dbt {metadata.get('dbt_version', '?')}); "
            f"featuremart reads {supported} (dbt-core 1.8 to 1.11): rebuild with a supported dbt-core "
            f"(`pip install 'dbt-core>=1.10,<1.12'`, then `dbt build`)."
        )

    models: dict[str, Model] = {}
    tests: list[Test] = []
    for uid, node in _entries(raw, "nodes", path):
        with _entry(path, f"node {uid!r}"):
            kind = node.get("resource_type")
            if kind == "model":
                models[uid] = _model(node)
            elif kind == "test" and node.get("test_metadata"):
                tm = node["test_metadata"]
                tests.append(
                    Test(
                        unique_id=uid,
                        name=tm.get("name", ""),
                        namespace=tm.get("namespace"),
                        kwargs=dict(tm.get("kwargs") or {}),
                        attached_node=node.get("attached_node"),
                    )
                )
    exposures = {}
    for uid, node in _entries(raw, "exposures", path):
        with _entry(path, f"exposure {uid!r}"):
            exposures[node["name"]] = _exposure(uid, node)
    sources = {}
    for uid, node in _entries(raw, "sources", path):
        with _entry(path, f"source {uid!r}"):
            sources[uid] = Source(uid, f"{node.get('source_name')}.{node.get('name')}", node.get("relation_name") or "")
    return Manifest(
        path=path,
        schema_version=version,
        dbt_version=str(metadata.get("dbt_version", "")),
        generated_at=str(metadata.get("generated_at", "")),
        adapter_type=str(metadata.get("adapter_type", "")),
        checksum=hashlib.sha256(raw_bytes).hexdigest(),
        models=models,
        tests=tuple(tests),
        exposures=exposures,
        sources=sources,
        invocation_id=str(metadata.get("invocation_id") or ""),
        project_name=str(metadata.get("project_name") or ""),
    )


def _exposure(uid: str, node: dict[str, Any]) -> Exposure:
    owner = node.get("owner") or {}
    return Exposure(
            unique_id=uid,
        name=node["name"],
        type=node.get("type", ""),
        description=node.get("description") or "",
        owner=owner.get("email") or owner.get("name"),
        path=node.get("original_file_path", ""),
        meta=_featuremart_meta(node),
        depends_on=tuple((node.get("depends_on") or {}).get("nodes") or ()),
    )


def _model(node: dict[str, Any]) -> Model:
    config = node.get("config") or {}
    patch = node.get("patch_path")  # "project://models/x.yml"
    columns = {}
    for name, col in (node.get("columns") or {}).items():
        columns[name] = Column(
            name=col.get("name", name),
            description=col.get("description") or "",
            data_type=col.get("data_type"),
            meta=_featuremart_meta(col),
        )
    return Model(
        unique_id=node["unique_id"],
        name=node["name"],
        package=node.get("package_name", ""),
        sql_path=node.get("original_file_path", ""),
        yaml_path=patch.split("://", 1)[-1] if patch else None,
        database=node.get("database"),
        schema=node.get("schema", ""),
        identifier=node.get("alias") or node["name"],
        materialized=config.get("materialized", ""),
        description=node.get("description") or "",
        meta=_featuremart_meta(node),
        tags=tuple(node.get("tags") or ()),
        columns=columns,
        depends_on=tuple((node.get("depends_on") or {}).get("nodes") or ()),
        checksum=str((node.get("checksum") or {}).get("checksum") or ""),
    )


def load_run_results(target_dir: Path) -> RunResults:
    """Read `target_dir/run_results.json`: which nodes the latest dbt command built and tested, how and when."""
    path = Path(target_dir) / "run_results.json"
    raw = _read_json(path, "run results")
    results = {}
    listed = raw.get("results") or []
    if not isinstance(listed, list):
        raise ArtifactError(f"{path}: results is not a JSON list; {_BUILD_HINT} to rewrite it.")
    for i, r in enumerate(listed):
        with _entry(path, f"results[{i}]"):
            results[r["unique_id"]] = RunResult(r["unique_id"], str(r.get("status")), r.get("message"),
                                                    _completed_at(r))
    args = raw.get("args") or {}
    metadata = raw.get("metadata") or {}
    return RunResults(
        path=path,
        generated_at=str(metadata.get("generated_at", "")),
        command=str(args.get("which") or args.get("invocation_command") or ""),
        results=results,
        invocation_id=str(metadata.get("invocation_id") or ""),
        empty=bool(args.get("empty")),
    )


def _completed_at(result: dict[str, Any]) -> datetime | None:
    """When a node's last timed step (compile, execute) finished, as a naive UTC datetime."""
    ends = [t.get("completed_at") for t in result.get("timing") or [] if t.get("completed_at")]
    if not ends:
        return None
    moment = datetime.fromisoformat(str(ends[-1]).replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
