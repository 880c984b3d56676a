"""The `featuremart` command line: list, describe, validate, sync, status, get, serve, training-set.

Options mirror dbt's (`--project-dir`, `--profiles-dir`, `--target`). User errors print one clear message,
never a traceback, and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from featuremart.errors import ConfigError, ConfigProblems, FeaturemartError, OnlineStoreError, ValidationError, WarehouseError
from featuremart.registry import Feature, FeatureService, FeatureView

if TYPE_CHECKING:  # pragma: no cover - imported where used: `get` and `serve` must not load dbt or DuckDB,
    # and the project commands (training-set, list, ...) not Redis's client
    from featuremart.online.reader import FeatureValue, OnlineReader
    from featuremart.store import FeatureStore
    from featuremart.sync import SyncRun

#: Exit codes (docs/operations.md): everything asked for happened; a user error, nothing written; at least one
#: selected view was withheld (the others were published); the sync failed, the previous values still served;
#: a check found a breach: `status` an error-level freshness or drift (docs/monitoring.md), `skew` a mismatch
#: rate above its threshold (docs/flywheel.md).
EXIT_OK, EXIT_USER_ERROR, EXIT_WITHHELD, EXIT_FAILED, EXIT_BREACH = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--project-dir", default=".", help="the dbt project directory (default: .)")
    common.add_argument("--profiles-dir", default=None, help="where profiles.yml is (default: as dbt finds it)")
    common.add_argument("--target", default=None, help="the dbt target to read (default: the profile's target)")
    common.add_argument("--vars", default=None, help="dbt vars as a YAML mapping, as for `dbt build --vars`")
    # dbt's own node selection (docs: "Selecting feature views"), narrowed to feature views.
    selecting = argparse.ArgumentParser(add_help=False)
    selecting.add_argument("-s", "--select", nargs="+", default=[],
                           help="dbt node selection, as `dbt build --select` (graph operators, tag:, path:, ...)")
    selecting.add_argument("--exclude", nargs="+", default=[], help="dbt node selection of models to leave out")
    selecting.add_argument("--selector", default=None, help="a selector defined in selectors.yml")
    selecting.add_argument("--state", default=None, metavar="DIR",
                           help="the artifacts of a previous run, for state:modified (as `dbt build --state`)")

    parser = argparse.ArgumentParser(prog="featuremart", description="A dbt/SQL-first feature store.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", parents=[common, selecting], help="list feature views and features")
    describe = sub.add_parser("describe", parents=[common], help="show a feature view, a feature or a service")
    describe.add_argument("name", help="a view, view.feature, or a feature service")
    sub.add_parser("validate", parents=[common], help="check metadata against the manifest and the warehouse")

    sync = sub.add_parser("sync", parents=[common, selecting],
                          help="publish the latest feature values to the online store")
    sync.add_argument("--full-refresh", action="store_true", help="rewrite every value, not only what changed")
    sync.add_argument("--dry-run", action="store_true", help="print what would be inserted, updated, deleted")
    sync.add_argument("--no-incremental", action="store_true",
                      help="diff every entity even of views with a changed_at column (finds deleted rows)")
    sync.add_argument("--allow-mass-delete", action="store_true",
                      help="publish views even if they delete more than max_delete_fraction of their entities")
    sync.add_argument("--json", action="store_true", help="print the run record as JSON (for CI logs)")

    status = sub.add_parser("status", parents=[common, selecting],
                            help="freshness of each online view and service, from source to online (exit 4 on error)")
    status.add_argument("--json", action="store_true", help="print the status as JSON (docs/monitoring.md)")

    report = sub.add_parser("report", parents=[common, selecting],
                            help="write a static HTML report: services, views, features, freshness, statistics, drift")
    report.add_argument("--output", required=True, metavar="DIR",
                        help="the directory to write the site into (created if missing; its pages are replaced)")
    report.add_argument("--runs", type=int, default=10, metavar="N",
                        help="runs shown in each feature's drift chart and history (default: 10)")

    online = argparse.ArgumentParser(add_help=False)
    online.add_argument("--redis-url", metavar="URL", default=None,
                        help="the online store (default: $FEATUREMART_REDIS_URL); with either, no dbt project is read")
    online.add_argument("--prefix", default=None,
                        help="the key prefix the sync wrote under (default: $FEATUREMART_PREFIX, else fm)")

    get = sub.add_parser("get", parents=[common, online], help="read features of one entity from the online store")
    what = get.add_mutually_exclusive_group(required=True)
    what.add_argument("--service", help="a feature service (a dbt exposure of type ml)")
    what.add_argument("--features", help="comma-separated view.feature (or view.*) references")
    get.add_argument("keys", nargs="+", metavar="KEY=VALUE", help="entity keys, e.g. customer_id=C123")
    get.add_argument("--json", action="store_true", help="print JSON")

    serve = sub.add_parser("serve", parents=[common, online], help="serve features over HTTP (docs/serving.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--token-env", metavar="VAR", default=None,
                       help="name of an environment variable holding a bearer token that requests must send")
    serve.add_argument("--max-entities", type=int, default=1000, metavar="N",
                       help="the largest batch of entities one request may ask for (default: 1000)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                       help="the largest request body accepted (default: 1 MiB)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="server processes (default: 1); more than one needs --redis-url or FEATUREMART_REDIS_URL")
    serve.add_argument("--max-connections", type=int, default=512, metavar="N",
                       help="open connections per process; more are closed at once (default: 512)")
    serve.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="time a connection has to send a request's headers (default: 10)")
    serve.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="time a request has to send its body (default: 30; 408 after)")
    serve.add_argument("--keep-alive", type=float, default=5.0, metavar="SECONDS",
                       help="how long an idle keep-alive connection stays open (default: 5)")
    serve.add_argument("--log-dir", metavar="DIR", default=None,
                       help="log every read of the services that log (exposure meta log: true) as Parquet under "
                            "DIR (docs/flywheel.md)")
    serve.add_argument("--log-services", metavar="NAMES", default=None,
                       help="with --log-dir: which reads to log: 'all', or comma-separated services")

    stats = sub.add_parser("stats", parents=[common],
                           help="feature statistics of the last syncs, and drift (docs/monitoring.md)")
    stats.add_argument("name", metavar="VIEW[.FEATURE]", help="a feature view, or one of its features")
    stats.add_argument("--runs", type=int, default=10, metavar="N", help="how many of the last runs to show "
                       "(default: 10)")
    stats.add_argument("--baseline", default=None, metavar="BASELINE",
                       help="also compare with a Parquet file, a dbt model, or a date range START..END of the "
                            "view's history")
    stats.add_argument("--json", action="store_true", help="print JSON")

    skew = sub.add_parser("skew", parents=[common],
                          help="compare logged online values with their point-in-time recomputation")
    skew.add_argument("--service", dest="skew_service", required=True, help="the feature service to check")
    skew.add_argument("--log-dir", metavar="DIR", default=None,
                      help="where the logs are (default: $FEATUREMART_SERVED_LOG_DIR, else data/served_log)")
    skew.add_argument("--examples", type=int, default=3, metavar="N", help="examples per feature (default: 3)")
    skew.add_argument("--json", action="store_true", help="print the report as JSON")

    logs = sub.add_parser("logs", help="the served-feature log (docs/flywheel.md)")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True, metavar="ACTION")
    export = logs_sub.add_parser("export", help="turn the served-feature log's spool into Parquet files, for dbt")
    export.add_argument("--project-dir", default=".", help="the dbt project directory (default: .), where a "
                        "relative --log-dir is")
    export.add_argument("--log-dir", metavar="DIR", default=None,
                        help="where the logs are (default: $FEATUREMART_SERVED_LOG_DIR, else data/served_log)")
    export.add_argument("--json", action="store_true", help="print what was exported as JSON")

    training = sub.add_parser("training-set", parents=[common],
                              help="build a point-in-time correct training set from a spine of labelled events")
    training.add_argument("--spine", required=True,
                          help="a dbt model, a table, a SQL query, or a Parquet file of (entity keys, timestamp, ...)")
    training.add_argument("--timestamp", required=True, help="the spine's timestamp column")
    which = training.add_mutually_exclusive_group(required=True)
    which.add_argument("--service", dest="ts_service", help="a feature service (a dbt exposure of type ml)")
    which.add_argument("--features", dest="ts_features", help="comma-separated view.feature (or view.*) references")
    training.add_argument("--output", required=True, help="where to write it: a .parquet or .csv file")
    training.add_argument("--unordered", action="store_true",
                          help="rows in whatever order the join leaves them, not the spine's (saves a sort: "
                               "docs/training-sets.md)")
    return parser


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = console or Console(emoji=False)  # `fm:lock:sync` is a key, not the :lock: emoji
    err = Console(stderr=True, emoji=False) if console.file is sys.stdout else console
    try:
        if args.command in SERVING_COMMANDS:  # need only Redis: the dbt project is opened only as a fallback
            return SERVING_COMMANDS[args.command](args, console)
        from featuremart.store import FeatureStore

        store = FeatureStore(args.project_dir, profiles_dir=args.profiles_dir, target=args.target, vars=args.vars)
        with store:
            try:
                return COMMANDS[args.command](store, args, console)
            finally:
                _say_which_store(store)
    except ValidationError as exc:
        err.print(f"[bold red]{len(exc.problems)} error(s) in feature metadata:[/]")
        for problem in exc.problems:
            err.print(f"  [red]✗[/] {escape(problem)}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except ConfigProblems as exc:
        if len(exc.problems) > 1:
            err.print(f"[bold red]{len(exc.problems)} error(s) in features.yml and the featuremart dbt vars:[/]")
        for problem in exc.problems:
            err.print(f"  [red]✗[/] {escape(problem)}" if len(exc.problems) > 1 else
                      f"[bold red]Error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except FeaturemartError as exc:
        err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


def _say_which_store(store: FeatureStore) -> None:
    """Name the online store a command used, on stderr (never mixed into stdout, which may be --json)."""
    used = store.online_store_used
    if used:
        Console(stderr=True).print(f"online store: {used}", highlight=False, soft_wrap=True)


def serving_url(args: argparse.Namespace) -> str | None:
    """The Redis URL `get` and `serve` read from: --redis-url, else FEATUREMART_REDIS_URL, else None."""
    import os

    from featuremart.online.reader import URL_ENV

    return args.redis_url or os.environ.get(URL_ENV) or None


@contextmanager
def open_reader(args: argparse.Namespace) -> Iterator[OnlineReader]:
    """The online reader for `get` and `serve`: from the Redis URL alone when one is given (no dbt project, no
    warehouse secrets); otherwise from the dbt project in --project-dir (its features.yml names the store, or
    the embedded quick-start store under target/)."""
    from pathlib import Path

    from featuremart.online.reader import URL_ENV, OnlineReader

    url = serving_url(args)
    if url:
        reader = OnlineReader.connect(url, prefix=args.prefix)
        try:
            yield reader
        finally:
            Console(stderr=True).print(f"online store: {reader.store.url}", highlight=False, soft_wrap=True)
            reader.store.close()
        return
    if not (Path(args.project_dir) / "dbt_project.yml").is_file():
        raise FeaturemartError(f"no online store to read: pass --redis-url URL or set {URL_ENV} (no dbt project "
                               f"in {Path(args.project_dir).resolve()} to take it from)")
    from featuremart.store import FeatureStore

    with FeatureStore(args.project_dir, profiles_dir=args.profiles_dir, target=args.target) as store:
        try:
            yield store.reader
        finally:
            _say_which_store(store)


def cmd_list(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    views = store.select(args.select, args.exclude, args.selector, args.state)
    for view in views:
        table = Table(title_justify="left", expand=False, title=(
            f"[bold]{view.name}[/]  entity {', '.join(view.entities)} · owner {view.owner or '-'} · tier "
            f"{view.tier or '-'} · ttl {view.ttl_label} · online {'yes' if view.online else 'no'}"))
        table.add_column("feature", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("description", overflow="fold")
        for f in view.features:
            table.add_row(f.name, f.dtype, " ".join(f.description.split()))
        console.print(table)
    shown = {v.name for v in views}
    services = {name: s for name, s in store.registry.services.items() if set(s.view_names) & shown}
    if services:
        st = Table(title="Feature services")
        for column in ("service", "views", "features", "owner"):
            st.add_column(column)
        for s in services.values():
            st.add_row(s.name, ", ".join(s.view_names), str(len(s.features)), s.owner or "")
        console.print(st)
    return 0


def cmd_describe(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    registry = store.registry
    name = args.name
    if name in registry.services:
        _describe_service(registry.services[name], console)
    elif "." in name:
        view = registry.view(name.split(".", 1)[0])
        _describe_feature(view, view.feature(name.split(".", 1)[1]), console)
    else:
        view = registry.view(name)
        _describe_view(store, view, console)
    return 0


def _describe_view(store: FeatureStore, view: FeatureView, console: Console) -> int:
    manifest = store.manifest()
    fresh = store.freshness(view)
    upstream = [manifest.sources[u].name if u in manifest.sources else
                (manifest.models[u].name if u in manifest.models else u) for u in view.upstream]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Any]] = [
        ("feature view", view.name), ("description", view.description), ("entities", ", ".join(view.entities)),
        ("join keys", ", ".join(f"{k} ({t})" for k, t in view.join_keys)), ("timestamp", view.timestamp),
        ("ttl", view.ttl_label), ("online", "yes" if view.online else "no"),
        ("owner", view.owner or ""), ("tier", view.tier or ""), ("tags", ", ".join(view.tags)),
        ("SQL model", view.sql_path), ("YAML", view.yaml_path or ""), ("relation", str(view.relation)),
        ("upstream", ", ".join(upstream)), ("version", view.version),
        ("newest event", str(fresh.max_event_ts or "no rows")),
        ("age", f"{_age(fresh.age)} ({fresh.status})" if fresh.age is not None else fresh.status),
    ]
    if view.online:
        rows.append(("online memory", _online_memory(store, view)))
    for key, value in rows:
        grid.add_row(key, str(value))
    console.print(grid)
    table = Table(title="features")
    for column in ("feature", "type", "warehouse type", "description"):
        table.add_column(column, overflow="fold")
    for f in view.features:
        table.add_row(f.name, f.dtype, f.warehouse_type, f.description)
    console.print(table)
    return 0


def _online_memory(store: FeatureStore, view: FeatureView) -> str:
    """Expected (the sizing formula) and actual (MEMORY USAGE of a sample, scaled) Redis memory of a view."""
    from featuremart.online.sizing import KEY_OVERHEAD_BYTES, human, view_memory

    try:
        memory = view_memory(store.online, view.name, view.version)
    except OnlineStoreError as exc:
        return f"unknown: {exc}"
    if memory.entities is None:
        return "unknown: no sync recorded its entity count in the online store yet (run `featuremart sync`)"
    if not memory.sampled:
        return f"{memory.entities:,} entities recorded, but no key of version {view.version} found to measure"
    return (f"expected {human(memory.expected_bytes)} ({memory.entities:,} entities x ({KEY_OVERHEAD_BYTES} B per "
            f"key + {memory.mean_key_bytes:.0f} B key + {memory.mean_value_bytes:.0f} B value)), actual "
            f"{human(memory.actual_bytes)} (MEMORY USAGE of {memory.sampled} keys x entities); durable sync "
            f"state {human(memory.state_bytes)}")


def _describe_feature(view: FeatureView, feature: Feature, console: Console) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in (("feature", feature.ref), ("type", f"{feature.dtype} ({feature.warehouse_type})"),
                       ("description", feature.description), ("entities", ", ".join(view.entities)),
                       ("ttl", view.ttl_label), ("owner", view.owner or ""), ("tier", view.tier or ""),
                       ("SQL model", view.sql_path)):
        grid.add_row(key, value)
    console.print(grid)


def _describe_service(service: FeatureService, console: Console) -> None:
    console.print(f"[bold]feature service[/] {service.name}  ({service.path})")
    if service.description:
        console.print(service.description)
    table = Table()
    for column in ("feature", "type", "description"):
        table.add_column(column, overflow="fold")
    for f in service.features:
        table.add_row(f.ref, f.dtype, f.description)
    console.print(table)


def cmd_validate(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    registry = store.validated_registry()
    warnings = list(registry.problems) + store.non_finite_values()
    for problem in warnings:
        console.print(f"  [yellow]![/] {escape(str(problem))}", highlight=False, soft_wrap=True)
    console.print(f"[green]OK[/]: {len(registry.views)} feature views, "
                  f"{sum(len(v.features) for v in registry.views.values())} features, "
                  f"{len(registry.services)} services; {len(warnings)} warning(s)")
    return 0


def cmd_sync(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    from featuremart.progress import SyncProgress

    # featuremart.sync (Redis's client, pyarrow) is imported by store.sync, after it has started the warehouse's
    # first query: the imports then overlap that query (FeatureStore.sync)
    try:
        with SyncProgress(console, enabled=console.is_terminal and not args.json) as progress:
            run = store.sync(select=args.select, exclude=args.exclude, selector=args.selector, state=args.state,
                             full_refresh=args.full_refresh,
                             dry_run=args.dry_run, incremental=not args.no_incremental, progress=progress.update,
                             allow_mass_delete=args.allow_mass_delete)
    except (OnlineStoreError, WarehouseError) as exc:  # could not start: still a run record, saying why
        if isinstance(exc, ConfigError):
            raise  # a malformed URL: exit 1, a rerun does not help
        from featuremart.sync import SyncRun

        run = SyncRun.failed(str(exc), dry_run=args.dry_run, full_refresh=args.full_refresh)
    if args.json:
        console.print_json(json.dumps(run.to_json()))
    else:
        console.print(render_run(run))
        # Below the table, not its caption: a caption folds at the table's width, mid-word in a long path.
        if run.error:
            console.print(f"[red]{escape(run.error)}[/]", soft_wrap=True)
        for note in run.notes:
            console.print(escape(note), soft_wrap=True, highlight=False)
    return sync_exit_code(run)


def sync_exit_code(run: SyncRun) -> int:
    """0: every selected view published or unchanged; 2: some withheld, the rest published; 3: failed."""
    if run.status == "failed":
        return EXIT_FAILED
    if any(v.status == "withheld" for v in run.views):
        return EXIT_WITHHELD
    return EXIT_OK


def render_run(run: SyncRun) -> Table:
    title = f"sync {run.run_id}: {run.status}" + (" (dry run)" if run.dry_run else "") + f" in {run.seconds:.2f}s"
    numbers = ("inserted", "updated", "deleted", "unchanged", "seconds")
    rows = []
    for v in run.views:
        counts = ("",) * 5 if v.status in ("skipped", "withheld") else (
            str(v.inserted), str(v.updated), str(v.deleted), str(v.unchanged), f"{v.seconds:.2f}")
        note = v.reason or ("state rebuilt from the store; every value rewritten" if v.rebuilt else "")
        rows.append((v.view, v.status, *counts, note))
    return _table(title, ("view", "status", *numbers, "note"), rows, wraps=("view", "note"), right=numbers)


def cmd_status(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    """Freshness from source to online of the selected online views and their services; exit 4 on any error."""
    from featuremart.monitoring.status import collect, plain_text, rich_table

    report = collect(store, store.select(args.select, args.exclude, args.selector, args.state, online_only=True))
    if args.json:  # written as it is: rich's print_json took 1.7 s of a 3.5 s run at 100 views
        console.file.write(json.dumps(report.json(), indent=2) + "\n")
    elif console.is_terminal:
        console.print(rich_table(report))
    else:
        console.file.write(plain_text(report))
    return EXIT_BREACH if report.breached else EXIT_OK


def cmd_report(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    """The static HTML site (docs/monitoring.md#the-report): exit 0 once written, whatever the status it shows."""
    from featuremart.monitoring.report import INDEX, write_site

    if args.runs < 1:
        raise FeaturemartError(f"--runs {args.runs}: show at least 1 run")
    chosen = (store.select(args.select, args.exclude, args.selector, args.state)
              if args.select or args.exclude or args.selector else None)
    site = write_site(store, args.output, chosen, runs=args.runs)
    console.print(f"wrote {len(site.pages)} page(s) to {site.output}: open {site.output / INDEX}",
                  highlight=False, soft_wrap=True)
    for name, why in site.without_stats:  # said on the view's page too
        console.print(f"{name}: shown without statistics: {why}", highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_get(args: argparse.Namespace, console: Console) -> int:
    entity = {}
    for pair in args.keys:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FeaturemartError(f"entity key {pair!r} should be written KEY=VALUE, e.g. customer_id=C123")
        entity[key] = value
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    with open_reader(args) as reader:
        record = reader.get([entity], service=args.service, features=features)[0]
    if args.json:
        console.print_json(json.dumps({name: _json_value(v) for name, v in record.items()}, default=str))
        return 0
    rows = [(name, "" if value.value is None else repr(value.value) if isinstance(value.value, str)
             else str(value.value), _ts(value.event_ts), Text(value.status, style=_STATUS_STYLE[value.status]))
            for name, value in record.items()]
    console.print(_table(", ".join(f"{k}={v}" for k, v in entity.items()),
                         ("feature", "value", "event time", "status"), rows, wraps=("value",)))
    return 0


_STATUS_STYLE = {"present": "green", "missing": "yellow", "expired": "red"}


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], wraps: Sequence[str],
           right: Sequence[str] = ()) -> Table:
    """A table whose short columns keep their full width; only the `wraps` columns fold on a narrow screen."""
    table = Table(title=title)
    for i, header in enumerate(headers):
        widest = max([len(header)] + [len(getattr(r[i], "plain", str(r[i]))) for r in rows])
        fixed = header not in wraps
        table.add_column(header, justify="right" if header in right else "left", no_wrap=fixed,
                         min_width=min(widest, 40) if fixed else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _json_value(v: FeatureValue) -> dict[str, Any]:
    return {"value": v.value, "event_ts": v.event_ts.isoformat() if v.event_ts else None, "status": v.status}


def _ts(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _age(age: Any) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.1f}h"


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    import logging
    import os

    from featuremart.server import ServerSettings, serve

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise FeaturemartError(f"--token-env {args.token_env}: that environment variable is unset or empty; "
                                   "set it to the bearer token clients will send")
    for name, value in (("--max-entities", args.max_entities), ("--max-body-bytes", args.max_body_bytes),
                        ("--workers", args.workers), ("--max-connections", args.max_connections)):
        if value < 1:
            raise FeaturemartError(f"{name} must be at least 1, got {value}")
    if not 1 <= args.port <= 65535:
        raise FeaturemartError(f"--port {args.port}: a TCP port is a number from 1 to 65535")
    for name, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout),
                        ("--keep-alive", args.keep_alive)):
        if not value > 0:
            raise FeaturemartError(f"{name} must be a positive number of seconds, got {value}")
    url = serving_url(args)
    if args.workers > 1 and not url:
        raise FeaturemartError("--workers above 1 needs --redis-url or FEATUREMART_REDIS_URL: each process "
                               "connects to Redis itself (the embedded quick-start store serves one process)")
    settings = ServerSettings(redis_url=url, prefix=args.prefix, token_env=args.token_env,
                              max_entities=args.max_entities, max_body_bytes=args.max_body_bytes,
                              max_connections=args.max_connections, header_timeout=args.header_timeout,
                              body_timeout=args.body_timeout, keep_alive=args.keep_alive)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.log_dir:
        from featuremart.servedlog.writer import LOG_DIR_ENV, SERVICES_ENV, ServedLog, services_option

        if args.workers > 1:  # each worker process logs its own reads (featuremart.server.create_app)
            ServedLog(args.log_dir, services=services_option(args.log_services)).close()  # check it now
            os.environ[LOG_DIR_ENV] = args.log_dir
            if args.log_services:
                os.environ[SERVICES_ENV] = args.log_services
    with open_reader(args) as reader:  # connects now: a wrong URL fails here, with one message
        if args.log_dir and args.workers == 1:
            from featuremart.servedlog import ServedLog

            ServedLog(args.log_dir, services=services_option(args.log_services)).attach(reader)
        console.print(f"serving features from {reader.store.url} on http://{args.host}:{args.port}"
                      f"{f' with {args.workers} workers' if args.workers > 1 else ''}"
                      f"{' (bearer token from $' + args.token_env + ')' if token else ''}", highlight=False)
        serve(reader if args.workers == 1 else None, settings, host=args.host, port=args.port, token=token,
              workers=args.workers)
    return 0


def cmd_stats(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    from featuremart.monitoring.baseline import Baseline, baseline_drift
    from featuremart.monitoring.drift import view_thresholds
    from featuremart.monitoring.summary import view_summary

    if args.runs < 1:
        raise FeaturemartError(f"--runs {args.runs}: show at least 1 run")
    view_name, _, feature_name = args.name.partition(".")
    view = store.registry.view(view_name)
    feature = view.feature(feature_name) if feature_name else None
    thresholds = view_thresholds(view, store.config.tiers)
    compare = None
    if args.baseline:
        manifest = store.manifest()
        baseline = Baseline.parse(args.baseline, [m.name for m in manifest.models.values()])

        def compare(features, latest):
            from featuremart.registry import relation_of

            if baseline.kind == "parquet":
                return baseline_drift(baseline, view, features, latest, thresholds)
            model = manifest.model_named(baseline.text) if baseline.kind == "model" else None
            with store.warehouse() as wh:
                return baseline_drift(baseline, view, features, latest, thresholds, warehouse=wh,
                                      relation=relation_of(model) if model else None)
    summary = view_summary(store.online, view, feature, runs=args.runs, thresholds=thresholds,
                           baseline=compare, baseline_text=args.baseline or "")
    if args.json:
        console.print_json(json.dumps(summary, default=str))
        return 0
    for table in render_stats(summary):
        console.print(table)
    return 0


def render_stats(summary: dict[str, Any]) -> list[Table]:
    """The latest statistics (one row per feature), then each feature's history over the runs shown."""
    from featuremart.monitoring.summary import number_text, percent_text

    baseline = (summary.get("baseline") or {}).get("drift") or {}
    latest_rows = []
    for name, f in summary["features"].items():
        s, last = f["latest"], f["history"][0]
        if s["kind"] == "number":
            q = s.get("quantiles") or {}
            shape = (f"mean {number_text(s['mean'])} sd {number_text(s['stddev'])} · min {number_text(s['min'])} p50 {number_text(q.get('p50'))} "
                     f"max {number_text(s['max'])}")
        elif s["kind"] == "category":
            top = ", ".join(f"{v} {n}" for v, n in (s.get("top") or [])[:3])
            shape = f"{s['distinct']} distinct · top {top or '-'}"
        else:
            shape = (f"length {number_text(s['length']['mean'])} (min {number_text(s['length']['min'])}, max "
                     f"{number_text(s['length']['max'])}) · norm {number_text(s['norm']['mean'])}")
        row = [escape(name), s["dtype"], str(s["count"]), percent_text(s["null_fraction"]), escape(shape), number_text(last["psi"]),
               number_text(last["ks"]), last["level"]]
        if summary.get("baseline"):
            b = baseline.get(name) or {}
            row += [number_text(b.get("psi")), number_text(b.get("ks")), b.get("level", "n/a")]
        latest_rows.append(row)
    headers = ["feature", "type", "count", "null", "distribution", "psi prev", "ks prev", "drift"]
    if summary.get("baseline"):
        headers += ["psi base", "ks base", "drift base"]
    entities = summary["entities"] if summary.get("entities") is not None else "?"
    title = f"{summary['view']}: {entities} entities published {summary['as_of']} (run {summary['run_id']})"
    if (summary.get("sample") or 1.0) < 1.0:
        title += f", profiled on a sample of {summary['rows']}"
    if summary.get("baseline"):
        title += f"; baseline {summary['baseline']['baseline']} ({summary['baseline']['rows']} rows)"
    tables = [_table(title, headers, latest_rows, wraps=("distribution",),
                     right=("count", "null", "psi prev", "ks prev", "psi base", "ks base"))]
    for name, f in summary["features"].items():
        rows = [(h["as_of"] or "", h["run_id"] or "", str(h["count"]), percent_text(h["null_fraction"]),
                 number_text(h.get("mean", h.get("distinct", h.get("mean_length")))), number_text(h["psi"]), number_text(h["ks"]),
                 h["level"]) for h in f["history"]]
        center = {"number": "mean", "category": "distinct"}.get(f["latest"]["kind"], "mean length")
        tables.append(_table(f"{summary['view']}.{name} over the last {len(rows)} run(s), newest first",
                             ("as of", "run", "count", "null", center, "psi", "ks", "drift"), rows, wraps=(),
                             right=("count", "null", center, "psi", "ks")))
    return tables


def cmd_training_set(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    from featuremart.training import OUTPUT_SUFFIXES

    output = args.output
    if not output.lower().endswith(OUTPUT_SUFFIXES):
        raise FeaturemartError(f"--output {output!r}: write a .parquet or .csv file")
    features = [f.strip() for f in args.ts_features.split(",")] if args.ts_features else None
    started = time.perf_counter()
    rows, columns = store.write_training_set(output, args.spine, args.timestamp, service=args.ts_service,
                                             features=features, ordered=not args.unordered)
    console.print(f"wrote {rows} rows × {columns} columns to {output} "
                  f"in {time.perf_counter() - started:.1f}s", highlight=False)
    return 0


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    """`logs export`: exit 0 when every spooled record is in Parquet, 1 when some could not be turned into rows."""
    from pathlib import Path

    from featuremart.servedlog.export import export_logs
    from featuremart.servedlog.writer import default_log_dir

    project_dir = Path(args.project_dir).absolute()
    directory = project_dir / args.log_dir if args.log_dir else default_log_dir(project_dir)
    done = export_logs(directory)
    if args.json:
        console.print_json(json.dumps({**done._asdict(), "log_dir": str(directory)}))
    else:
        console.print(f"exported {done.rows:,} log rows ({done.records:,} reads) from {done.segments:,} spool "
                      f"segments into {done.files:,} Parquet files under {directory}", highlight=False)
    if done.skipped:
        console.print(f"[red]skipped {done.skipped:,} log rows that could not be turned into file rows: "
                      f"{escape(done.problem or '')}[/]")
        return EXIT_USER_ERROR
    return EXIT_OK


def cmd_skew(store: FeatureStore, args: argparse.Namespace, console: Console) -> int:
    """Exit 0 when every feature's disagreement is within features.yml's skew.max_mismatch_rate, else 4."""
    from featuremart.servedlog.skew import skew_report

    if args.examples < 0:
        raise FeaturemartError(f"--examples must be 0 or more, got {args.examples}")
    report = skew_report(store, args.skew_service, log_dir=args.log_dir, examples=args.examples)
    if args.json:
        console.print_json(json.dumps(report.to_json(), default=str))
    else:
        table = _table(f"skew of {report.service} ({report.log_dir})",
                       ["feature", "rows", "mismatch", "missing online", "missing offline", "max |diff|", "stale"],
                       [[f.feature, str(f.rows), f"{f.mismatch_rate:.2%}", f"{f.rate(f.missing_online):.2%}",
                         f"{f.rate(f.missing_offline):.2%}", "" if f.max_abs_diff is None else f"{f.max_abs_diff:g}",
                         str(f.stale_rows or "")] for f in report.features], ())
        console.print(table)
        for f in report.features:
            for e in f.examples:
                console.print(f"  {f.feature}: {e.outcome} request {e.request_id} at {_ts(e.request_ts)} "
                              f"{e.entity_keys}: online {e.online_value} ({e.online_status}), offline "
                              f"{e.offline_value}", highlight=False, soft_wrap=True)
        for name, rows in report.unknown.items():
            console.print(f"  {name}: {rows} logged row(s) of a feature {report.service} no longer has; not compared",
                          highlight=False)
    failing = report.failing
    if failing:
        console.print(f"[red]skew above skew.max_mismatch_rate ({report.threshold:g}) in features.yml:[/] "
                      + ", ".join(f"{f.feature} ({f.disagreement_rate:.2%} of {f.rows})" for f in failing),
                      highlight=False, soft_wrap=True)
        return EXIT_BREACH
    return EXIT_OK


COMMANDS = {"list": cmd_list, "describe": cmd_describe, "validate": cmd_validate, "sync": cmd_sync,
            "status": cmd_status, "stats": cmd_stats, "report": cmd_report, "training-set": cmd_training_set, "skew": cmd_skew}
#: Commands that read the online store or the served log only: they take (args, console) and open no dbt project
#: unless needed.
SERVING_COMMANDS = {"get": cmd_get, "serve": cmd_serve, "logs": cmd_logs}

if __name__ == "__main__":
    sys.exit(main())
