"""featuremart: a dbt/SQL-first feature store. Features are dbt models; the latest values are served from Redis."""

from featuremart.errors import (
    ArtifactError,
    ConfigError,
    FeaturemartError,
    OnlineStoreError,
    SyncLockedError,
    TrainingSetError,
    UnknownNameError,
    ValidationError,
    WarehouseError,
)
from featuremart.online.reader import EXPIRED, MISSING, PRESENT, FeatureValue
from featuremart.registry import Feature, FeatureService, FeatureView, Registry
from featuremart.store import FeatureStore

__version__ = "0.1.0"

__all__ = [
    "ArtifactError", "ConfigError", "EXPIRED", "Feature", "FeatureService", "FeatureStore", "FeatureValue",
    "FeatureView", "FeaturemartError", "MISSING", "OnlineStoreError", "PRESENT", "Registry", "SyncLockedError",
    "TrainingSetError", "UnknownNameError", "ValidationError", "WarehouseError",
]
