"""Redis memory of an online view: the sizing formula of docs/operations.md, and a measurement on a sample.

The constants are measured by bench/durable_state.py (Redis 7.0, jemalloc, keys with an expiry; see
bench/README.md). A view's memory is about

    entities × (KEY_OVERHEAD_BYTES + key bytes + value bytes)   feature values
  + entities × STATE_BYTES_PER_ENTITY                           its durable sync state (featuremart.durable)

where a value is the JSON array `[event time µs, feature, ...]` of docs/redis-format.md.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from featuremart.online import keys
from featuremart.online.store import OnlineStore

#: Redis's own bytes per key beyond the key and value strings (dict entry, object header, expiry entry,
#: allocator rounding), measured at 1M keys.
KEY_OVERHEAD_BYTES = 115
#: The durable sync state's Redis memory per entity (zstd Parquet of key, value hash, event time).
STATE_BYTES_PER_ENTITY = 11
#: Keys sampled for `MEMORY USAGE`, and how many keys a SCAN looks at to find them at most.
SAMPLE_KEYS, SCAN_LIMIT = 200, 200_000


@dataclass(frozen=True)
class ViewMemory:
    """What a view's keys take in Redis: expected by the formula, and measured on a sample of its keys."""

    entities: int | None  # as recorded by the last sync (the durable state's record), None if unknown
    sampled: int  # keys measured
    mean_key_bytes: float
    mean_value_bytes: float
    mean_usage_bytes: float  # MEMORY USAGE per key, averaged over the sample
    state_bytes: int  # MEMORY USAGE of the view's durable state keys

    @property
    def expected_bytes(self) -> float | None:
        """The formula, with the sample's mean key and value lengths."""
        if self.entities is None or not self.sampled:
            return None
        return self.entities * (KEY_OVERHEAD_BYTES + self.mean_key_bytes + self.mean_value_bytes)

    @property
    def actual_bytes(self) -> float | None:
        """MEMORY USAGE of the sample, scaled by the entity count."""
        if self.entities is None or not self.sampled:
            return None
        return self.entities * self.mean_usage_bytes


def expected_bytes(entities: int, key_bytes: float, value_bytes: float) -> float:
    """The sizing formula for one view, its durable state included."""
    return entities * (KEY_OVERHEAD_BYTES + key_bytes + value_bytes + STATE_BYTES_PER_ENTITY)


def view_memory(store: OnlineStore, view: str, version: str) -> ViewMemory:
    """Measure a view: its entity count from its durable state record, `MEMORY USAGE` of up to SAMPLE_KEYS of
    its keys found by SCAN (looking at SCAN_LIMIT keys at most, so it stays cheap on a big store)."""
    prefix = store.prefix
    record_key = keys.view_state_key(prefix, view)
    raw = store.get_bytes(record_key)
    record = _json(raw)
    entities = record.get("rows") if isinstance(record.get("rows"), int) else None
    pattern = keys.row_key_pattern(prefix) + f"}}:{view}:{version}"
    found: list[bytes] = []
    looked = 0
    for key in store.scan(pattern, count=1000):
        found.append(key)
        looked += 1
        if len(found) >= SAMPLE_KEYS or looked >= SCAN_LIMIT:
            break
    found = found[:SAMPLE_KEYS]
    usage = [u for u in store.memory_usage(found) if u is not None] if found else []
    values = store.mget(found) if found else []
    lengths = [len(v) for v in values if v is not None]
    token = record.get("token")
    state_keys = [record_key] + ([keys.view_state_part_key(prefix, view, token, n)
                                  for n in range(int(record.get("parts") or 0))] if token else [])
    state = sum(u or 0 for u in store.memory_usage(state_keys)) if raw is not None else 0
    return ViewMemory(entities, len(usage), statistics.mean(len(k) for k in found) if found else 0.0,
                      statistics.mean(lengths) if lengths else 0.0, statistics.mean(usage) if usage else 0.0, state)


def _json(raw: bytes | None) -> dict:
    try:
        value = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def human(n: float) -> str:
    """Bytes for people: 1.2 MB (decimal units, as Redis's INFO `used_memory_human` is not)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
