"""The one door to dbt: every dbt call featuremart makes goes through this module.

Where dbt already does a job, featuremart calls dbt for it rather than imitating it:

- loading the project and its profile (`env_var` with defaults, `--vars`, `--target`, `--profiles-dir`,
  DBT_PROFILES_DIR, DBT_TARGET_PATH, ...) is dbt's own loader, the one `dbt build` runs;
- node selection (`--select/--exclude/--selector`, graph operators, `tag:`, `path:`, `config.meta...`,
  `exposure:`, `state:modified --state DIR`) is dbt's selector, run in-process over target/manifest.json;
- parsing a project whose files changed since its manifest was written is `dbt parse`, into a private
  target path (target/ keeps what the last `dbt build` wrote: the sync's build gate reads it);
- rendering a macro for the active target (training sets) is `dbt compile --inline`.

dbt is imported inside the functions, never at module level: the online read path (`featuremart get`,
`featuremart serve`) must not pay for importing dbt, and does not import this module's callers' dbt paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

from featuremart.errors import ConfigError, FeaturemartError, SelectionError

#: Private target paths under the project's target/ (never target/ itself: the gate reads its artifacts).
PARSE_TARGET_DIR = "featuremart_parse"
COMPILE_TARGET_DIR = "featuremart_compile"
#: Compiled training-set SQL kept per (manifest, project files, target, request); the oldest go first.
COMPILE_CACHE_ENTRIES = 64
#: Loaded projects kept (see `load_dbt_project`); the oldest go first.
LOAD_CACHE_ENTRIES = 64
#: Files whose change makes a manifest stale: what `dbt parse` reads.
PROJECT_FILE_SUFFIXES = (".sql", ".yml", ".yaml", ".csv", ".md", ".py")
_PROJECT_YAML = ("dbt_project.yml", "features.yml", "selectors.yml", "packages.yml", "dependencies.yml")

V = TypeVar("V")
_LOCK = threading.RLock()  # dbt keeps its flags and adapters in process globals: one dbt call at a time


@dataclass(frozen=True)
class DbtProject:
    """What featuremart needs of dbt_project.yml and the profile's active target, as dbt loaded them."""

    project_dir: Path
    profiles_dir: Path
    name: str
    target_dir: Path
    profile_name: str
    target_name: str
    target: dict[str, Any]  # the rendered output block: type, path, host, ...
    #: The root project's vars as a root-project model's `var()` sees them (dbt_project.yml, then --vars).
    vars: dict[str, Any] = field(default_factory=dict)
    #: `--vars` given on the command line, passed on to every dbt call made for this project.
    cli_vars: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def adapter_type(self) -> str:
        return str(self.target.get("type", ""))


# --- loading ----------------------------------------------------------------------------------------------

def load_dbt_project(project_dir: Path, profiles_dir: Path | None = None, target: str | None = None,
                     vars: Mapping[str, Any] | str | None = None) -> DbtProject:
    """Load dbt_project.yml and the profile's active target with dbt's own loader.

    Honours what `dbt build` honours: `--profiles-dir` (else DBT_PROFILES_DIR, else the working directory,
    else ~/.dbt; featuremart also looks in the project directory before ~/.dbt), `--target` (else
    DBT_TARGET, else the profile's default), DBT_TARGET_PATH, `env_var()` with defaults, and `--vars`
    (a mapping or dbt's YAML string). Raises ConfigError with dbt's message, on one line, naming the file.
    """
    project_dir = Path(project_dir).resolve()
    if not (project_dir / "dbt_project.yml").exists():
        raise ConfigError(f"{project_dir / 'dbt_project.yml'} not found: run featuremart in a dbt project "
                          "directory or pass --project-dir")
    if profiles_dir is None and not os.environ.get("DBT_PROFILES_DIR") and not (Path.cwd() / "profiles.yml").exists() \
            and (project_dir / "profiles.yml").exists():
        profiles_dir = project_dir
    cli_vars = _cli_vars(vars)
    key = _load_key(project_dir, profiles_dir, target, cli_vars)
    if key is not None and (cached := _read_loaded(key, project_dir, cli_vars)) is not None:
        return cached
    with _LOCK:
        flags = _set_flags(project_dir, profiles_dir, target, cli_vars)
        profile, project = _load_parts(flags)
    credentials = profile.credentials
    rendered_target = {"type": credentials.type, **credentials.to_dict(omit_none=True)}
    root_vars = _root_vars(project, cli_vars)
    target_path = Path(project.target_path)
    loaded = DbtProject(
        project_dir=project_dir,
        profiles_dir=Path(flags.PROFILES_DIR).resolve(),
        name=project.project_name,
        target_dir=(target_path if target_path.is_absolute() else project_dir / target_path).resolve(),
        profile_name=profile.profile_name,
        target_name=profile.target_name,
        target=rendered_target,
        vars=root_vars,
        cli_vars=cli_vars,
    )
    folders = _remember_folders(loaded, project)
    if key is not None:
        _write_loaded(key, loaded, folders, profiles_dir)
    return loaded


# --- the loader's cache -----------------------------------------------------------------------------------
#
# dbt's loader costs 1.5-2.5 s per process, nearly all of it importing dbt (bench/README.md): every project
# command paid it. Its result is a pure function of a few inputs, so it is kept in a small file keyed by all
# of them: the bytes of dbt_project.yml and of the profiles.yml dbt would read, the environment variables
# those files name in `env_var(...)`, every DBT_* variable (dbt's flags read them; not dbt's
# DBT_ENV_SECRET_* unless a file names them), --vars, --target,
# --profiles-dir, the working directory (dbt resolves relative paths and finds profiles.yml from it), and the
# dbt-core, adapter and featuremart versions. A file calling `env_var` with a name that is not a literal, a
# target holding a secret (nothing secret is written to disk), or vars that are not plain JSON are loaded
# by dbt every time.

LOAD_CACHE_ENV = "FEATUREMART_CACHE_DIR"
_ENV_VAR_CALL = re.compile(r"""env_var\s*\(\s*(['"])([^'"]+)\1""")
_SECRET_FIELD = re.compile(r"pass|secret|token|private|key", re.IGNORECASE)
_CACHE_FORMAT = 1


def load_cache_dir() -> Path:
    """Where loaded projects are cached: $FEATUREMART_CACHE_DIR, else $XDG_CACHE_HOME/featuremart, else
    ~/.cache/featuremart."""
    if os.environ.get(LOAD_CACHE_ENV):
        return Path(os.environ[LOAD_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "featuremart"


def _profiles_file(project_dir: Path, profiles_dir: Path | None) -> Path:
    """The profiles.yml dbt reads with these options (dbt's own order; featuremart's project directory
    fallback is already in `profiles_dir`)."""
    if profiles_dir is not None:
        return Path(profiles_dir).resolve() / "profiles.yml"
    if os.environ.get("DBT_PROFILES_DIR"):
        return Path(os.environ["DBT_PROFILES_DIR"]).resolve() / "profiles.yml"
    if (Path.cwd() / "profiles.yml").exists():
        return Path.cwd() / "profiles.yml"
    return Path.home() / ".dbt" / "profiles.yml"


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _load_key(project_dir: Path, profiles_dir: Path | None, target: str | None,
              cli_vars: dict[str, Any]) -> str | None:
    """The cache key of a project load with these options, or None when it cannot be cached."""
    texts = []
    for path in (project_dir / "dbt_project.yml", _profiles_file(project_dir, profiles_dir)):
        try:
            text = path.read_text()
        except OSError:
            return None  # dbt reports it
        names = [m.group(2) for m in _ENV_VAR_CALL.finditer(text)]
        if text.count("env_var") != len(names):
            return None  # an env_var(...) whose name is computed: cannot say what it reads
        texts.append((str(path), text, {n: os.environ.get(n) for n in names}))
    try:
        material = json.dumps([_CACHE_FORMAT, str(project_dir), str(profiles_dir), target, cli_vars,
                               str(Path.cwd()), texts, sorted((k, v) for k, v in os.environ.items()
                                                              if k.startswith("DBT_")
                                                              and not k.startswith("DBT_ENV_SECRET_")),
                               _version("dbt-core"), _version("featuremart")], sort_keys=True)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _read_loaded(key: str, project_dir: Path, cli_vars: dict[str, Any]) -> DbtProject | None:
    """The cached load for `key`, if there is one and its adapter is still the installed version."""
    path = load_cache_dir() / "projects" / f"{key}.json"
    try:
        entry = json.loads(path.read_text())
        if entry["format"] != _CACHE_FORMAT or _version(f"dbt-{entry['target']['type']}") != entry["adapter"]:
            return None
        loaded = DbtProject(project_dir=project_dir, profiles_dir=Path(entry["profiles_dir"]), name=entry["name"],
                            target_dir=Path(entry["target_dir"]), profile_name=entry["profile_name"],
                            target_name=entry["target_name"], target=entry["target"], vars=entry["vars"],
                            cli_vars=cli_vars)
        folders = frozenset(entry["folders"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    with contextlib.suppress(OSError):
        _FOLDERS[_folders_key(loaded)] = ((project_dir / "dbt_project.yml").stat().st_mtime_ns, folders)
        os.utime(path)  # recently used: pruned last
    return loaded


def _write_loaded(key: str, loaded: DbtProject, folders: frozenset[str], profiles_dir: Path | None) -> None:
    """Keep a load for `_read_loaded` (best effort: an unwritable cache only costs the next process dbt's
    loader). Targets holding a secret are not written."""
    if any(_SECRET_FIELD.search(name) and value for name, value in loaded.target.items()):
        return
    if loaded.profiles_dir / "profiles.yml" != _profiles_file(loaded.project_dir, profiles_dir):
        return  # dbt read another profiles.yml than the key names
    try:
        text = json.dumps({"format": _CACHE_FORMAT, "adapter": _version(f"dbt-{loaded.adapter_type}"),
                           "profiles_dir": str(loaded.profiles_dir), "name": loaded.name,
                           "target_dir": str(loaded.target_dir), "profile_name": loaded.profile_name,
                           "target_name": loaded.target_name, "target": loaded.target, "vars": loaded.vars,
                           "folders": sorted(folders)})
        if json.loads(text)["vars"] != loaded.vars or json.loads(text)["target"] != loaded.target:
            return  # not plain JSON (tuples, dates...): would not come back the same
        folder = load_cache_dir() / "projects"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the user's own, like ~/.dbt
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / f"{key}.json")
        prune_cache(folder, LOAD_CACHE_ENTRIES, "*.json")
    except (OSError, TypeError, ValueError):
        pass


def _root_vars(project, cli_vars: dict[str, Any]) -> dict[str, Any]:
    """The vars a root-project model's `var()` returns: global vars, then those scoped to the project, then
    `--vars`; a string value is rendered as dbt's `var()` renders it (e.g. `{{ env_var('TTL', '30d') }}`)."""
    from dbt.clients.jinja import get_rendered
    from dbt.context.base import generate_base_context
    from dbt_common.exceptions import DbtBaseException

    raw = dict(project.vars.to_dict())
    scoped = raw.get(project.project_name)
    merged = {**raw, **(scoped if isinstance(scoped, dict) else {}), **cli_vars}
    context = generate_base_context(cli_vars)
    try:
        return {name: get_rendered(value, dict(context)) if isinstance(value, str) else value
                for name, value in merged.items()}
    except DbtBaseException as exc:
        raise ConfigError(f"{Path(project.project_root) / 'dbt_project.yml'}: vars: {_one_line(exc)}") from None


def _cli_vars(vars: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if vars is None or vars == "":
        return {}
    if isinstance(vars, Mapping):
        return dict(vars)
    from dbt.config.utils import parse_cli_vars
    from dbt_common.events.event_manager_client import cleanup_event_logger
    from dbt_common.exceptions import DbtBaseException

    cleanup_event_logger()  # dbt logs a bad --vars to stdout before raising: the error below says it once
    try:
        return parse_cli_vars(str(vars))
    except DbtBaseException as exc:
        raise ConfigError(f"--vars {vars!r}: {_one_line(exc)}; write a YAML mapping, e.g. '{{my_var: 1}}'") from None


def _set_flags(project_dir: Path, profiles_dir: Path | None, target: str | None, cli_vars: dict[str, Any],
               state: Path | None = None):
    """dbt's global flags for a `dbt ls` with these options, read the way dbt's CLI reads them (so DBT_*
    environment variables and defaults apply), quiet: dbt's event lines must not mix into our output."""
    from dbt.cli.flags import Flags, args_to_context
    from dbt.events.logging import setup_event_logger
    from dbt.flags import set_flags
    from dbt_common.context import set_invocation_context

    argv = ["ls", "--project-dir", str(project_dir), "--quiet", "--log-level", "none",
            "--log-level-file", "none", "--no-send-anonymous-usage-stats", "--no-write-json"]
    if profiles_dir is not None:
        argv += ["--profiles-dir", str(profiles_dir)]
    if target:
        argv += ["--target", target]
    if cli_vars:
        argv += ["--vars", json.dumps(cli_vars)]
    if state is not None:
        argv += ["--state", str(state)]
    os.environ.setdefault("DO_NOT_TRACK", "1")
    set_invocation_context(os.environ)
    try:
        flags = Flags(args_to_context(argv))
    except Exception as exc:  # click's usage errors: a bad --profiles-dir, --state ...
        raise ConfigError(f"dbt refused the options {' '.join(argv[1:])}: {_one_line(exc)}") from None
    set_flags(flags)
    setup_event_logger(flags)
    return flags


def _load_parts(flags):
    """(profile, project) as dbt's CLI loads them; dbt's errors become one-line ConfigErrors."""
    from dbt.config.runtime import load_profile, load_project
    from dbt_common.exceptions import DbtBaseException

    profiles_path = Path(flags.PROFILES_DIR) / "profiles.yml"
    project_path = Path(flags.PROJECT_DIR) / "dbt_project.yml"
    try:
        profile = load_profile(str(flags.PROJECT_DIR), flags.VARS, flags.PROFILE, flags.TARGET, None)
    except DbtBaseException as exc:
        raise ConfigError(f"{profiles_path}: {_one_line(exc)}") from None
    try:
        project = load_project(str(flags.PROJECT_DIR), flags.VERSION_CHECK, profile, flags.VARS, validate=True)
    except DbtBaseException as exc:
        raise ConfigError(f"{project_path}: {_one_line(exc)}") from None
    return profile, project


def _runtime_config(project: DbtProject, state: Path | None = None):
    """dbt's RuntimeConfig for the project (flags set as for `dbt ls`): what adapters and selectors need."""
    from dbt.config.runtime import RuntimeConfig

    flags = _set_flags(project.project_dir, project.profiles_dir, project.target_name, project.cli_vars, state)
    profile, loaded = _load_parts(flags)
    return RuntimeConfig.from_parts(loaded, profile, flags)


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "msg", None) or exc)
    return " ".join(text.split())


# --- the adapter ------------------------------------------------------------------------------------------

def open_adapter(project: DbtProject):
    """dbt's adapter for the project's target, configured from profiles.yml as `dbt build` would be."""
    from dbt.adapters.factory import FACTORY
    from dbt.mp_context import get_mp_context

    with _LOCK:
        config = _runtime_config(project)
        # A private instance, not dbt's process-wide registry: that keeps the first adapter of a type, so a second
        # project (or other credentials) in the same process would silently reuse the first one's connection.
        FACTORY.load_plugin(config.credentials.type)
        return FACTORY.get_adapter_class_by_name(config.credentials.type)(config, get_mp_context())


# --- node selection ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What the user asked dbt to select: dbt's `--select/--exclude/--selector/--state`."""

    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selector: str | None = None
    state: Path | None = None

    @classmethod
    def of(cls, select: Iterable[str] = (), exclude: Iterable[str] = (), selector: str | None = None,
           state: str | Path | None = None) -> Selection:
        return cls(tuple(select or ()), tuple(exclude or ()), selector or None, Path(state) if state else None)

    def __bool__(self) -> bool:
        return bool(self.select or self.exclude or self.selector)

    def describe(self) -> str:
        """The selection as the user typed it, for messages."""
        parts = ([f"--select {' '.join(self.select)}"] if self.select else []) + \
                ([f"--exclude {' '.join(self.exclude)}"] if self.exclude else []) + \
                ([f"--selector {self.selector}"] if self.selector else []) + \
                ([f"--state {self.state}"] if self.state else [])
        return " ".join(parts) or "the default selector of selectors.yml"


def select_models(project: DbtProject, selection: Selection, manifest_path: Path | None = None) -> set[str]:
    """The unique ids of the models dbt selects (as `dbt ls --resource-type model` does), over the
    manifest at `manifest_path` (default: the project's target/manifest.json), in-process.

    Raises SelectionError naming the criterion when one is not dbt grammar (e.g. `tier:gold`), when a
    criterion of `--select` matches no node (a typo: dbt only warns), or when `--selector` is unknown.
    """
    with _LOCK:
        config = _runtime_config(project, selection.state)
        manifest = _dbt_manifest(manifest_path or project.target_dir / "manifest.json")
        spec = _selection_spec(config, selection)
        selector = _selector(config, manifest, project, selection)
        _check_criteria(selector, spec, selection)
        return {uid for uid in selector.get_selected(spec) if uid in manifest.nodes}


def select_views(project: DbtProject, views: Iterable[V], selection: Selection, *, online_only: bool,
                 manifest_path: Path | None = None) -> list[V]:
    """The feature views (objects with `model_id`, `name`, `online`) among `views` whose models dbt selects,
    sorted by name; with `online_only`, only the online ones. No selection means every view (and skips dbt,
    unless selectors.yml may name a default selector).

    Raises SelectionError naming the selection when it keeps no feature view: a sync or list of nothing is
    a mistake, never a success.
    """
    candidates = [v for v in views if v.online or not online_only]
    if not selection and not (project.project_dir / "selectors.yml").exists():
        return sorted(candidates, key=lambda v: v.name)
    chosen_ids = select_models(project, selection, manifest_path)
    chosen = sorted((v for v in candidates if v.model_id in chosen_ids), key=lambda v: v.name)
    if not chosen and (selection or candidates):  # nothing asked and nothing to give is not a mistake
        kind = "online feature view" if online_only else "feature view"
        names = sorted(uid.rsplit(".", 1)[-1] for uid in chosen_ids)
        models = (f"it selects the models {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}, none of "
                  f"them {'an online' if online_only else 'a'} feature view" if names else "it selects no model")
        raise SelectionError(f"{selection.describe()} matches no {kind}: {models}; feature views: "
                             f"{', '.join(sorted(v.name for v in candidates)) or 'none'}")
    return chosen


def _dbt_manifest(path: Path):
    from dbt.contracts.graph.manifest import Manifest, WritableManifest
    from dbt_common.exceptions import DbtBaseException

    if not path.exists():
        raise FeaturemartError(f"{path} not found: run `dbt build` in the project first")
    try:
        return Manifest.from_writable_manifest(WritableManifest.read_and_check_versions(str(path)))
    except DbtBaseException as exc:
        raise FeaturemartError(f"{path}: {_one_line(exc)}; run `dbt build` to rewrite it") from None


def _selection_spec(config, selection: Selection):
    """dbt's selection spec for the selection, chosen as dbt's tasks choose it (runnable.get_selection_spec):
    `--selector`, else `--select/--exclude`, else the selectors.yml default, else everything."""
    from dbt.graph import parse_difference
    from dbt_common.exceptions import DbtBaseException

    try:
        if selection.selector:
            if selection.select or selection.exclude:
                raise SelectionError("--selector cannot be combined with --select/--exclude (as in dbt): "
                                     "put the whole selection in selectors.yml, or use --select/--exclude")
            return config.get_selector(selection.selector)
        default = config.get_default_selector_name()
        if not (selection.select or selection.exclude) and default:
            return config.get_selector(default)
        return parse_difference(list(selection.select) or None, list(selection.exclude) or None)
    except DbtBaseException as exc:
        hint = ""
        if any(part.lstrip("+@").startswith("tier:") for arg in (*selection.select, *selection.exclude)
               for part in arg.replace(",", " ").split()):
            hint = ("; tier:<tier> was featuremart's own grammar and is gone: dbt selects a tier written in the "
                    "model's meta with config.meta.featuremart.tier:<tier>")
        raise SelectionError(f"{selection.describe()}: {_one_line(exc)}{hint}") from None


def _selector(config, manifest, project: DbtProject, selection: Selection):
    from dbt.compilation import Linker
    from dbt.contracts.state import PreviousState
    from dbt.graph import ResourceTypeSelector
    from dbt.node_types import NodeType
    from dbt_common.exceptions import DbtBaseException

    previous = None
    if selection.state is not None:
        state = selection.state if selection.state.is_absolute() else Path.cwd() / selection.state
        if not (state / "manifest.json").exists():
            raise SelectionError(f"--state {selection.state}: no manifest.json there; point --state at the target/ "
                                 "of the run to compare with (e.g. a copy of production's artifacts)")
        try:
            previous = PreviousState(state, project.target_dir, project.project_dir)
        except DbtBaseException as exc:
            raise SelectionError(f"--state {selection.state}: {_one_line(exc)}") from None
    graph = Linker().get_graph(manifest)
    return ResourceTypeSelector(graph, manifest, previous, [NodeType.Model], include_empty_nodes=True)


def _check_criteria(selector, spec, selection: Selection) -> None:
    """Each criterion of the selection must be dbt grammar and match some node: where dbt only warns (and a
    scheduled sync would silently skip a mistyped view), featuremart stops, naming the criterion."""
    from dbt.graph import SelectionCriteria
    from dbt.graph.cli import DEFAULT_INCLUDES
    from dbt_common.exceptions import DbtBaseException

    for criterion in _criteria(spec):
        if criterion.raw in DEFAULT_INCLUDES and criterion.raw not in selection.select:
            continue  # dbt's "everything" when --select is not given: some of its parts may match nothing
        try:
            found = selector.select_included(selector.graph.nodes(), criterion)
        except DbtBaseException as exc:
            raise SelectionError(f"{selection.describe()}: selector {criterion.raw!r}: {_one_line(exc)}") from None
        if not found and isinstance(criterion, SelectionCriteria) and criterion.method not in _RUN_DEPENDENT:
            raise SelectionError(f"{selection.describe()}: {criterion.raw!r} matches no node of the project (a "
                                 "typo? see `dbt ls -s ...`)")


#: Selector methods whose matches depend on a previous run: matching nothing there is an answer, not a typo.
_RUN_DEPENDENT = ("state", "result", "source_status")


def _criteria(spec) -> Iterator[Any]:
    from dbt.graph import SelectionCriteria

    if isinstance(spec, SelectionCriteria):
        yield spec
    else:
        for component in getattr(spec, "components", ()):
            yield from _criteria(component)


# --- parsing ----------------------------------------------------------------------------------------------

#: The folders dbt reads, per loaded project and its dbt_project.yml's mtime: `project_files` runs on every
#: cached training-set compile, and rebuilding dbt's RuntimeConfig to list them costs about 0.3 s.
_FOLDERS: dict[tuple, tuple[int, frozenset[str]]] = {}


def _folders_key(project: DbtProject) -> tuple:
    return (project.project_dir, project.profiles_dir, project.target_name,
            json.dumps(project.cli_vars, sort_keys=True, default=str))


def _remember_folders(project: DbtProject, config) -> frozenset[str]:
    """Record the folders of `config` (a dbt Project or RuntimeConfig, as loaded for `project`)."""
    folders = frozenset({*config.model_paths, *config.macro_paths, *config.seed_paths, *config.test_paths,
                         *config.snapshot_paths, *config.analysis_paths, *config.docs_paths,
                         config.packages_install_path})
    with contextlib.suppress(OSError):
        _FOLDERS[_folders_key(project)] = ((project.project_dir / "dbt_project.yml").stat().st_mtime_ns, folders)
    return folders


def _project_folders(project: DbtProject) -> frozenset[str]:
    """The folders dbt reads for the project, as dbt's loader rendered dbt_project.yml (remembered until that
    file changes)."""
    try:
        mtime = (project.project_dir / "dbt_project.yml").stat().st_mtime_ns
    except OSError:
        mtime = None
    known = _FOLDERS.get(_folders_key(project))
    if known is not None and known[0] == mtime:
        return known[1]
    with _LOCK:
        config = _runtime_config(project)
    return _remember_folders(project, config)


def project_files(project: DbtProject) -> list[Path]:
    """The files dbt reads for the project (its model, macro, test, seed, snapshot, analysis and docs paths,
    installed packages) and the project's own YAML (dbt_project.yml, features.yml, selectors.yml, ...)."""
    folders = _project_folders(project)
    root = project.project_dir
    files = [root / name for name in _PROJECT_YAML if (root / name).exists()]
    for folder in sorted(folders):
        if (root / folder).is_dir():
            files += sorted(p for p in (root / folder).rglob("*") if p.suffix in PROJECT_FILE_SUFFIXES and p.is_file())
    return files


def project_files_newer_than(project: DbtProject, moment: float) -> list[Path]:
    """The project files (see `project_files`) changed after `moment` (a file mtime)."""
    return [p for p in project_files(project) if p.stat().st_mtime > moment]


def parse_project(project: DbtProject) -> Path:
    """`dbt parse` the project in-process into a private target path; returns that directory (its
    manifest.json is what the user's files say now). Partial parsing keeps it fast: the private path starts
    from target/'s partial-parse state. Raises ConfigError with dbt's message when the project does not parse.
    """
    out = project.target_dir / PARSE_TARGET_DIR
    out.mkdir(parents=True, exist_ok=True)
    seed = project.target_dir / "partial_parse.msgpack"
    if seed.exists() and not (out / "partial_parse.msgpack").exists():
        shutil.copy2(seed, out / "partial_parse.msgpack")
    _invoke(project, ["parse"], out, ConfigError, "dbt could not parse the project")
    return out


# --- compiling --------------------------------------------------------------------------------------------

def jinja_literal(value: Any) -> str:
    """A Python value as a Jinja literal, for the text given to `compile_inline` (JSON is valid Jinja for
    strings, numbers, lists and mappings; None and booleans are spelled as Jinja spells them)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{jinja_literal(k)}: {jinja_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(jinja_literal(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def depends_on(models: Iterable[str]) -> str:
    """`-- depends_on: {{ ref(...) }}` lines for inline Jinja whose macro refs models dbt cannot see while
    parsing (a feature service's views: dbt records refs before it knows which views a service has)."""
    return "".join(f"-- depends_on: {{{{ ref({jinja_literal(m)}) }}}}\n" for m in models)



def compile_inline(project: DbtProject, inline: str, cache: bool = False) -> str:
    """`inline` (Jinja SQL) rendered by `dbt compile --inline` for the project's target: the compiled SQL.

    With `cache`, the result is kept under the private compile path, keyed by what it depends on
    (target/manifest.json, the project files' newest change, the target and vars, the text): a second
    identical request skips dbt. Only for text whose rendering reads nothing from the warehouse that can
    change without a new manifest (columns of dbt models do not; those of a table dbt does not build may).
    """
    from featuremart.errors import TrainingSetError

    out = project.target_dir / COMPILE_TARGET_DIR
    cached = _cache_path(project, inline) if cache else None
    if cached is not None and (sql := _read_cached(cached)) is not None:
        return sql
    result = _invoke(project, ["compile", "--inline", inline], out, TrainingSetError,
                     "dbt could not compile the training set")
    sql = result.result.results[0].node.compiled_code
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(sql)
        tmp.replace(cached)
        prune_cache(cached.parent, COMPILE_CACHE_ENTRIES)
    return sql


def cached_compile(project: DbtProject, inline: str) -> str | None:
    """What `compile_inline(project, inline, cache=True)` would return from its cache, or None: no dbt runs
    (so a caller may keep its warehouse connection open when this answers)."""
    return _read_cached(_cache_path(project, inline))


def _cache_path(project: DbtProject, inline: str) -> Path:
    return project.target_dir / COMPILE_TARGET_DIR / "cache" / f"{_compile_key(project, inline)}.sql"


def _read_cached(path: Path) -> str | None:
    try:
        sql = path.read_text()
    except OSError:  # not cached (or pruned meanwhile)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: pruned last
    return sql


def _compile_key(project: DbtProject, inline: str) -> str:
    manifest = project.target_dir / "manifest.json"
    manifest_sum = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else ""
    newest = max((p.stat().st_mtime_ns for p in project_files(project)), default=0)
    material = json.dumps([manifest_sum, newest, project.target_name, project.target, project.cli_vars, inline],
                          sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def prune_cache(folder: Path, keep: int, pattern: str = "*.sql") -> None:
    """Keep the `keep` most recently used entries of a cache folder (used ones are touched), so caches stay small."""
    entries = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[keep:]:
        with contextlib.suppress(OSError):
            stale.unlink()


# --- running dbt ------------------------------------------------------------------------------------------

def _invoke(project: DbtProject, command: Sequence[str], target_path: Path, error: type[FeaturemartError],
            what: str):
    """Run a dbt command in-process, writing its artifacts to `target_path`; raises `error` with dbt's
    error lines when it fails."""
    from dbt.cli.main import dbtRunner

    errors: list[str] = []

    def keep_errors(event: Any) -> None:
        if event.info.level == "error":
            errors.append(event.info.msg)

    args = [*command, "--project-dir", str(project.project_dir), "--profiles-dir", str(project.profiles_dir),
            "--target", project.target_name, "--target-path", str(target_path),
            "--quiet", "--log-level", "none", "--log-level-file", "none", "--no-send-anonymous-usage-stats"]
    if project.cli_vars:
        args += ["--vars", json.dumps(project.cli_vars)]
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with _LOCK:
        # dbt resolves relative paths in profiles.yml (a DuckDB file) from the working directory; featuremart
        # resolves them from the project directory, where `dbt build` runs: run dbt from there too.
        cwd = os.getcwd()
        try:
            os.chdir(project.project_dir)
            result = dbtRunner(callbacks=[keep_errors]).invoke(args)
        except Exception as exc:  # dbt raises its own types for configuration problems
            raise error(f"{what}: {_one_line(exc)}") from None
        finally:
            os.chdir(cwd)
            if project.adapter_type == "duckdb":
                _release_dbt_duckdb()
    if not result.success:
        detail = " ".join(" ".join(e.split()) for e in errors) or _one_line(result.exception or "unknown error")
        raise error(f"{what} ({project.target_name}): {detail}")
    return result


def _release_dbt_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in-process after a run (a class-level environment that
    outlives the invocation): until then this process cannot open the file read-only for the warehouse."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # pragma: no cover - dbt-duckdb is how a duckdb target runs at all
        return
    with DuckDBConnectionManager._LOCK:
        env, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
        if env is not None:
            env.close()
