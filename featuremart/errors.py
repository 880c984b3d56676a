"""The exceptions featuremart raises: one root type, a subclass per domain.

Every message names the file, model, column or key at fault and says how to fix it, so the CLI can print it
as it is, without a traceback.
"""

from __future__ import annotations


class FeaturemartError(Exception):
    """Root of every error featuremart raises on purpose."""


class ArtifactError(FeaturemartError):
    """dbt artifacts (manifest.json, run_results.json) are missing, stale or of an unknown schema."""


class ConfigError(FeaturemartError):
    """features.yml or profiles.yml is missing or invalid."""


class ConfigProblems(ConfigError):
    """Wrong shapes in features.yml and the featuremart dbt vars: one line each, all found in one run."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SelectionError(FeaturemartError):
    """A `--select/--exclude/--selector` that dbt cannot parse, or that selects no feature view."""


class ValidationError(FeaturemartError):
    """Feature metadata contradicts the manifest, features.yml or the warehouse; holds every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


class WarehouseError(FeaturemartError):
    """The warehouse cannot be reached, is locked, or a relation is missing."""


class OnlineStoreError(FeaturemartError):
    """The online store (Redis) cannot be reached or rejected a command."""


class InvalidURLError(OnlineStoreError, ConfigError):
    """The online store's URL is malformed: a configuration error (exit 1), which no retry fixes."""


class SyncLockedError(OnlineStoreError):
    """Another sync holds the lock."""


class UnknownNameError(FeaturemartError):
    """A requested feature view, feature, service or entity key does not exist."""


class TrainingSetError(FeaturemartError):
    """A training set request that cannot be served: bad spine, unknown features, or dbt failed to compile."""


class NotPublishedError(FeaturemartError):
    """The online store answers but holds no published registry: no `featuremart sync` has run against it."""


class StoreChangedError(OnlineStoreError):
    """The online store restarted, was flushed, restored or failed over, or the sync lost its lock, during a
    sync: what was written may be lost, so nothing is published."""


class StatsError(FeaturemartError):
    """Feature statistics that cannot be shown: none recorded yet, or a `--baseline` that cannot be read or compared
    (missing, of other columns or types, empty)."""


class ReportError(FeaturemartError):
    """`featuremart report` cannot write its site: the output directory cannot be created or written."""


class StateError(FeaturemartError):
    """The sync state file is unreadable (corrupt or truncated); `featuremart sync --full-refresh` rebuilds it."""


class UnavailableError(FeaturemartError):
    """A feature service exists but cannot be served online now (one of its views is withheld)."""


class ServedLogError(FeaturemartError):
    """The served-feature log cannot be set up (its directory cannot be created or written), or holds nothing
    to compare for the service asked about."""
