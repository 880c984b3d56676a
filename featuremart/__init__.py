"""featuremart: a dbt/SQL-first feature store. Features are dbt models; the latest values are served from Redis.

The public names below are imported on first use (PEP 562), so that `featuremart get` and `featuremart serve`,
which need only Redis, never load dbt, DuckDB, sqlglot or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("ArtifactError", "ConfigError", "FeaturemartError", "NotPublishedError", "OnlineStoreError",
                     "ReportError", "ServedLogError", "StatsError", "SyncLockedError", "TrainingSetError",
                     "UnknownNameError", "ValidationError", "WarehouseError"), "featuremart.errors"),
    **dict.fromkeys(("EXPIRED", "MISSING", "PRESENT", "FeatureValue"), "featuremart.online.reader"),
    **dict.fromkeys(("Feature", "FeatureService", "FeatureView", "Registry"), "featuremart.registry"),
    "FeatureStore": "featuremart.store",
    "ServedLog": "featuremart.servedlog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featuremart' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from featuremart.errors import (ArtifactError, ConfigError, FeaturemartError, NotPublishedError,  # noqa: F401
                                    OnlineStoreError, ReportError, ServedLogError, StatsError, SyncLockedError,
                                    TrainingSetError, UnknownNameError, ValidationError, WarehouseError)
    from featuremart.online.reader import EXPIRED, MISSING, PRESENT, FeatureValue  # noqa: F401
    from featuremart.registry import Feature, FeatureService, FeatureView, Registry  # noqa: F401
    from featuremart.servedlog import ServedLog  # noqa: F401
    from featuremart.store import FeatureStore  # noqa: F401
