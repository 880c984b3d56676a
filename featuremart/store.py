"""FeatureStore: the public face of featuremart, for Python users and for the CLI.

Opened on a dbt project (the registry comes from its manifest, types from its warehouse) or on a Redis URL
alone (the registry comes from the snapshot the last sync published).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from featuremart import dbtcore
from featuremart.config import DbtProject, ProjectConfig, load_dbt_project, load_features_yml
from featuremart.errors import ArtifactError, FeaturemartError
from featuremart.manifest import Manifest, load_manifest
from featuremart.registry import FeatureView, Problem, Registry, build_registry, feature_models, relation_of
from featuremart.warehouse import (STAGE_BATCH_ROWS, STATE_FILE, DuckDBLimits, Prefetch, Warehouse, open_warehouse,
                                   temp_directory)

# Imported where used: a training set or `featuremart list` needs neither Redis, sqlglot nor the sync (about
# 0.3-0.6 s of imports and 60 MB of a CLI process, bench/README.md "Training sets end to end").
if TYPE_CHECKING:  # pragma: no cover
    import pyarrow

    from featuremart.online.reader import FeatureValue, OnlineReader, OnlineResult
    from featuremart.online.store import OnlineStore
    from featuremart.sync import SyncRun


@dataclass(frozen=True)
class Freshness:
    view: str
    max_event_ts: datetime | None
    age: timedelta | None
    status: str  # pass | warn | error | empty


class FeatureStore:
    """Features defined in a dbt project, served from Redis.

    Example:
        >>> fs = FeatureStore("path/to/project")                         # doctest: +SKIP
        >>> fs.get_online_features([{"customer_id": "C0000001", "merchant_id": "M00001"}],
        ...                        service="fraud_model")                 # doctest: +SKIP
    """

    def __init__(self, project_dir: str | Path = ".", *, profiles_dir: str | Path | None = None,
                 target: str | None = None, redis_url: str | None = None,
                 vars: Mapping[str, Any] | str | None = None):
        self.project: DbtProject = load_dbt_project(Path(project_dir), Path(profiles_dir) if profiles_dir else None,
                                                    target, vars)
        self.config: ProjectConfig = load_features_yml(self.project.project_dir, self.project.vars)
        self._redis_url = redis_url
        self._registry: Registry | None = None
        self._manifest: tuple[tuple[int, int, int] | None, Manifest] | None = None
        self._online: OnlineStore | None = None
        self._reader: OnlineReader | None = None

    @classmethod
    def from_url(cls, redis_url: str | None = None, *, prefix: str | None = None) -> FeatureStore:
        """A read-only store needing only Redis: the registry is the snapshot the last sync published.

        `redis_url` and `prefix` default to FEATUREMART_REDIS_URL and FEATUREMART_PREFIX (then `fm`); no dbt
        project, warehouse or profile is read.
        """
        from featuremart.online.reader import OnlineReader

        self = cls.__new__(cls)
        self.project = None  # type: ignore[assignment]
        self.config = None  # type: ignore[assignment]
        self._registry = self._manifest = None
        self._reader = OnlineReader.connect(redis_url, prefix=prefix)
        self._redis_url, self._online = redis_url, self._reader.store
        return self

    # -- the dbt side -------------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.project.target_dir / "featuremart"

    def manifest(self) -> Manifest:
        """target/manifest.json, parsed once per version of the file (a dbt manifest is megabytes of JSON: each
        training set read it twice, about 0.1 s here)."""
        path = self.project.target_dir / "manifest.json"
        try:
            st = path.stat()
            version = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:  # missing: load_manifest says what to do
            version = None
        if version is not None and self._manifest is not None and self._manifest[0] == version:
            return self._manifest[1]
        manifest = load_manifest(self.project.target_dir)
        if manifest.adapter_type and manifest.adapter_type != self.project.adapter_type:
            raise ArtifactError(
                f"{manifest.path} was built for a {manifest.adapter_type} target but target "
                f"{self.project.target_name!r} is {self.project.adapter_type}: run `dbt build --target "
                f"{self.project.target_name}` first"
            )
        self._manifest = (version, manifest)
        return manifest

    def warehouse(self) -> Warehouse:
        return open_warehouse(self.project)

    @property
    def registry(self) -> Registry:
        """Entities, feature views and services, validated against the warehouse (raises on any error)."""
        if self._registry is None:
            if self.project is None:
                self._registry = self.reader.registry
            else:
                self._registry = self._build_registry(self.manifest())
        return self._registry

    def _build_registry(self, manifest: Manifest, wh: Warehouse | None = None) -> Registry:
        """The registry of `manifest`, its columns read on `wh` (else a connection opened for it)."""
        if wh is None:
            with self.warehouse() as own:
                return self._build_registry(manifest, own)
        from featuremart import validated

        columns = wh.columns(relation_of(m) for m in feature_models(manifest))
        material = [manifest.checksum, str(manifest.path), repr(self.config),
                    sorted([str(r), r.database, r.schema, r.identifier, cols] for r, cols in columns.items())]
        return validated.cached("registry", material, lambda: build_registry(manifest, self.config, columns))

    def validate(self) -> list[Problem]:
        """Every warning about the metadata as the user wrote it, and about its values; raises ValidationError listing every error."""
        return list(self.validated_registry().problems) + self.non_finite_values()

    def validated_registry(self) -> Registry:
        """The registry of what the user wrote, validated; raises ValidationError listing every error.

        When a project file changed after target/manifest.json was written, dbt parses the project first
        (in-process, partial parse, into a private target path: target/ keeps what the last build wrote) and
        that manifest is validated, so a YAML edit is checked before the next `dbt build`. `registry` (what
        sync publishes) stays the last build's.
        """
        self._registry = None
        built = self.manifest()
        newer = dbtcore.project_files_newer_than(self.project, os.path.getmtime(built.path))
        if not newer:
            return self.registry
        registry = self._build_registry(load_manifest(dbtcore.parse_project(self.project)))
        first = newer[0].relative_to(self.project.project_dir)
        more = f" and {len(newer) - 1} more file(s)" if len(newer) > 1 else ""
        registry.problems.append(Problem(
            "warning", str(built.path.relative_to(self.project.project_dir)),
            f"older than {first}{more}: validated what dbt parses from your files now; `featuremart sync` "
            "publishes the last build until you run `dbt build`"))
        return registry

    def select(self, select: Iterable[str] = (), exclude: Iterable[str] = (), selector: str | None = None,
               state: str | Path | None = None, *, online_only: bool = False) -> list[FeatureView]:
        """The feature views whose models dbt's node selection picks (`dbt ls --resource-type model` with the
        same `--select/--exclude/--selector/--state`), over target/manifest.json; SelectionError when none."""
        if self.project is None:
            raise FeaturemartError("a FeatureStore opened from a Redis URL cannot select with dbt: open it on the "
                                   "dbt project")
        views = self.registry.views.values()
        return dbtcore.select_views(self.project, views, dbtcore.Selection.of(select, exclude, selector, state),
                                    online_only=online_only, manifest_path=self.manifest().path)

    def non_finite_values(self) -> list[Problem]:
        """A warning per float feature holding NaN or ±Infinity in the warehouse: online reads serve them as null
        (JSON has no such numbers) while training sets keep them, so a model would see two different values."""
        from featuremart import sql

        found = []
        with self.warehouse() as wh:
            for view in self.registry.views.values():
                query = sql.non_finite_counts(view, wh.dialect)
                counts = wh.query(sql.render(query, wh.dialect)) if query is not None else None
                for name in counts.column_names if counts is not None else ():
                    rows = counts.column(name)[0].as_py() or 0
                    if rows:
                        found.append(Problem("warning", view.yaml_path or view.sql_path, (
                            f"model {view.name}: feature {name}: {rows} row(s) hold NaN or ±Infinity, which online "
                            "reads serve as null (JSON has no such numbers) while training sets keep them; replace "
                            f"them in {view.sql_path} (e.g. nullif, or a guarded division) so both agree")))
        return found

    def freshness(self, view: FeatureView, now: datetime | None = None) -> Freshness:
        """The newest event time of a view in the warehouse, its age, and its tier's freshness verdict (the same
        query as `featuremart status`: featuremart.monitoring.status.newest_events)."""
        from featuremart.monitoring.freshness import from_us
        from featuremart.monitoring.status import newest_events

        now = now or datetime.now(timezone.utc).replace(tzinfo=None)
        with self.warehouse() as wh:
            newest = from_us(newest_events(wh, [view]).get(view.name))
        if newest is None:
            return Freshness(view.name, None, None, "empty")
        newest = newest.replace(tzinfo=None)  # naive UTC, as `now`
        age = now - newest
        return Freshness(view.name, newest, age, view.freshness.status(age))

    # -- the online side ----------------------------------------------------------------------------------
    @property
    def online(self) -> OnlineStore:
        if self._online is None:
            from featuremart.online.store import OnlineStore

            url = self._redis_url or self.config.online_store.url
            self._online = OnlineStore.connect(url, embedded_dir=self.state_dir,
                                               prefix=self.config.online_store.key_prefix)
            self._embedded = url is None
        return self._online

    @property
    def online_store_used(self) -> str | None:
        """Which online store this FeatureStore opened, for people (password redacted); None if it opened none."""
        if self._online is None:
            return None
        if getattr(self, "_embedded", False):
            return (f"embedded redis-server under {self.state_dir} (no online_store.url_env, "
                    "FEATUREMART_REDIS_URL unset)")
        return self._online.url

    @property
    def reader(self) -> OnlineReader:
        if self._reader is None:
            from featuremart.online.reader import OnlineReader

            self._reader = OnlineReader(self.online)
        return self._reader

    def log_served(self, directory: str | Path | None = None, *, services: Any = None, **options: Any) -> Any:
        """Log the online reads of this store (a `featuremart.servedlog.ServedLog`, returned; see docs/flywheel.md).

        `directory` defaults to $FEATUREMART_SERVED_LOG_DIR, else data/served_log in the dbt project; `services`
        to the services whose exposure sets `log: true` ("all": every read)."""
        from featuremart.servedlog import ServedLog, default_log_dir

        if directory is None:
            directory = default_log_dir(self.project.project_dir if self.project is not None else Path("."))
        return ServedLog(directory, services=services, **options).attach(self.reader)

    def sync(self, *, select: Iterable[str] = (), exclude: Iterable[str] = (), selector: str | None = None,
             state: str | Path | None = None, full_refresh: bool = False, dry_run: bool = False,
             incremental: bool = True, progress: Callable[[str, str, int, int], None] | None = None,
             allow_mass_delete: bool = False) -> SyncRun:
        """Publish the latest value per entity of the selected online views (see featuremart.sync).

        The selection is dbt's own (`select`, `exclude`, `selector`, `state` as for `dbt build`), narrowed to
        online feature views; one that keeps none raises SelectionError. `allow_mass_delete`: publish views
        even where they delete more than their `max_delete_fraction`."""
        if self.project is None:
            raise FeaturemartError("a FeatureStore opened from a Redis URL cannot sync: open it on the dbt project")
        registry = self.registry
        manifest = self.manifest()
        views = self.select(select, exclude, selector, state, online_only=True)  # dbt's, before the file is opened
        with self.warehouse() as wh:
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            with self._prefetch(wh, views, now, full_refresh or not incremental) as prefetched:
                # imported only now: Redis's client and the sync's modules load while the warehouse computes
                from featuremart.gate import BuildGate
                from featuremart.sync import Syncer

                gate = BuildGate.load(self.project, manifest, wh)
                return Syncer(registry, manifest, gate, wh, self.online, self.state_dir, now=now,
                              allow_mass_delete=allow_mass_delete,
                              max_delete_fraction=self.config.default_max_delete_fraction,
                              prefetched=prefetched).run(
                    views, full_refresh=full_refresh, dry_run=dry_run, incremental=incremental, progress=progress)

    @contextmanager
    def _prefetch(self, wh: Warehouse, views: Sequence[FeatureView], now: datetime,
                  whole: bool) -> Iterator[dict[str, Prefetch]]:
        """Start the first view's reads before the rest of the sync's start-up (warehouse.Prefetch): the reads a
        sync of every entity runs (`whole`, or a view with no `changed_at`, or no sync state yet: the cases where
        the sync cannot read incrementally), else none, since an incremental read of a few changed entities is
        cheap and depends on the state. The build gate is still checked before anything is written; a view it
        withholds, and any read the sync turns out not to need, is interrupted and dropped here."""
        from featuremart import sql

        prefetched: dict[str, Prefetch] = {}
        view = next((v for v in views if v.online), None)
        if view is not None and (whole or not view.changed_at or not (self.state_dir / STATE_FILE).exists()):
            wh.bound_memory(DuckDBLimits.from_env(), temp_directory(self.state_dir))
            found = wh.prefetch(sql.view_reads(view, self.config.online_store.key_prefix, now, wh.dialect),
                                STAGE_BATCH_ROWS)
            if found is not None:
                prefetched[view.name] = found
        try:
            yield prefetched
        finally:
            for found in prefetched.values():
                found.close()

    def get_online_features(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
                            features: Iterable[str] | None = None,
                            request_id: str | None = None) -> list[dict[str, FeatureValue]]:
        """Features for each entity from the online store, with event timestamps and statuses.

        `request_id`: the id a served-feature log (`log_served`) records this read under (docs/flywheel.md)."""
        return self.reader.get(entities, service=service, features=features, request_id=request_id)

    def read_online_features(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
                             features: Iterable[str] | None = None,
                             request_id: str | None = None) -> OnlineResult:
        """The values read for a batch of entities, to shape as records, columns or Arrow (one MGET)."""
        return self.reader.read(entities, service=service, features=features, request_id=request_id)

    def get_online_features_columns(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
                                    features: Iterable[str] | None = None,
                                    request_id: str | None = None) -> dict[str, list[Any]]:
        """Columns for batch scoring: entity keys, then `<name>`, `<name>__status`, `<name>__event_ts` per
        feature, one item per entity (see docs/serving.md)."""
        return self.reader.read(entities, service=service, features=features, request_id=request_id).to_columns()

    def get_online_features_arrow(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
                                  features: Iterable[str] | None = None,
                                  request_id: str | None = None) -> pyarrow.Table:
        """The columns of `get_online_features_columns` as a typed `pyarrow.Table`."""
        return self.reader.read(entities, service=service, features=features, request_id=request_id).to_arrow()

    def training_set(self, spine: Any, timestamp: str, *, service: str | None = None,
                     features: Iterable[str] | None = None, to_pandas: bool = False, ordered: bool = True) -> Any:
        """A point-in-time correct training set: for each spine row, each feature's value as it was served then.

        `spine` is a dbt model name, a table, a SQL query, a Parquet path, or a pandas / Arrow frame; the join is
        the `featuremart.training_set` dbt macro, compiled by dbt and run in the warehouse (docs/training-sets.md).
        Returns a pyarrow.Table, or a pandas DataFrame with `to_pandas=True`. Rows come in the spine's order;
        `ordered=False` skips putting them in it (the same rows, in the join's order).
        """
        from featuremart.training import arrow_order, in_spine_order, run_training_set

        self._needs_project("build training sets")
        wh = self.warehouse()
        try:
            features = self._training_request(wh, service, features)
            table = run_training_set(wh, *self._compile_training_set(wh, spine, timestamp, service, features,
                                                                     arrow_order(wh, ordered)))
            # before the close: DuckDB freeing the join's memory beside it made the placement 1.4x slower (its
            # unmapping stalls the other threads); after it, the peak is 1.15x the raw join's, not 1.04x
            table = in_spine_order(table)
        finally:
            wh.release()  # DuckDB closes on a helper thread while the table goes back; `close()` waits for it
        return table.to_pandas() if to_pandas else table

    def write_training_set(self, path: str | Path, spine: Any, timestamp: str, *, service: str | None = None,
                           features: Iterable[str] | None = None, ordered: bool = True) -> tuple[int, int]:
        """`training_set` written to a .parquet or .csv file, whole or not at all; returns (rows, columns).
        Parquet is streamed (on DuckDB, written by DuckDB): the whole table is never held in memory."""
        from featuremart.training import write_training_set_query

        self._needs_project("build training sets")
        with self.warehouse() as wh:
            features = self._training_request(wh, service, features)
            sql, frame = self._compile_training_set(wh, spine, timestamp, service, features, ordered)
            return write_training_set_query(wh, sql, frame, path)

    def _needs_project(self, what: str) -> None:
        if self.project is None:
            raise FeaturemartError(f"a FeatureStore opened from a Redis URL cannot {what}: open it on the dbt "
                                   "project")

    def _training_request(self, wh: Warehouse, service: str | None,
                          features: Iterable[str] | None) -> list[str] | None:
        """The request's features as a list, after checking its names against the registry (read on `wh`: one
        connection for the check and the join)."""
        features = None if features is None else list(features)
        if service is not None or features:
            if self._registry is None:
                self._registry = self._build_registry(self.manifest(), wh)
            self._registry.resolve(service=service, features=features)  # unknown names: a clear error, first
        return features

    def _compile_training_set(self, wh: Warehouse, spine: Any, timestamp: str, service: str | None,
                              features: list[str] | None, ordered: bool | str) -> tuple[str, Any]:
        from featuremart.training import compile_training_set

        compiled, frame = compile_training_set(self.project, wh, spine, timestamp, service=service,
                                               features=features, ordered=ordered, manifest=self.manifest)
        return compiled.sql, frame

    def close(self) -> None:
        """Release what the store holds: the online store, a served-feature log (written out), and any warehouse
        connection still closing (`training_set` releases its DuckDB file on a helper thread)."""
        if self.project is not None:
            from featuremart.warehouse import wait_released

            wait_released()
        if self._reader is not None and self._reader.served_log is not None:
            self._reader.served_log.close()  # writes what it holds (log_served)
        if self._online is not None:
            self._online.close()
            self._online = None
            self._reader = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
