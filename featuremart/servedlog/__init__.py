"""The served-feature log: what online reads returned, spooled by the serving process and exported as Parquet
for dbt to read (docs/flywheel.md).

`ServedLog` records every read of an `OnlineReader` it is attached to (Python API and `featuremart serve`)
without blocking it: the read only appends to a bounded in-memory buffer, which a background thread writes as
spool segments; `export_logs` (`featuremart logs export`) turns them into Parquet files partitioned by date. The
logs then feed training sets (dbt's `featuremart.training_set_from_logs`) and the skew report
(`featuremart.servedlog.skew`).
"""

from __future__ import annotations

from featuremart.servedlog.export import Exported, export_logs
from featuremart.servedlog.writer import (DEFAULT_LOG_DIR, FILE_COLUMNS, LOG_COLUMNS, LOG_DIR_ENV, LogStats, ServedLog,
                                          default_log_dir, request_id)

__all__ = ["DEFAULT_LOG_DIR", "FILE_COLUMNS", "LOG_COLUMNS", "LOG_DIR_ENV", "Exported", "LogStats", "ServedLog",
           "default_log_dir", "export_logs", "request_id"]
