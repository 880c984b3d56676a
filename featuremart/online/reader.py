"""Online reads: features of a service or a feature list, for a batch of entities, in one round trip.

Each value comes with its event timestamp and a status: present, missing (never synced, or the entity left)
or expired (older than the view's ttl: never served as present). The registry id is read in the same MGET
as the values, so a reader notices a new sync's registry at once and never mixes two versions of a view.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from featuremart.errors import FeaturemartError, UnknownNameError
from featuremart.online import keys
from featuremart.online.codec import decoder
from featuremart.online.store import OnlineStore
from featuremart.registry import Feature, FeatureView, Registry, output_names

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"


@dataclass(frozen=True)
class FeatureValue:
    value: Any
    event_ts: datetime | None
    status: str  # present | missing | expired

    def __rich__(self) -> str:
        colour = {PRESENT: "green", MISSING: "yellow", EXPIRED: "red"}[self.status]
        return f"[{colour}]{self.status}[/]"


class OnlineReader:
    """Reads features from the online store using the registry snapshot the last sync published."""

    def __init__(self, store: OnlineStore):
        self.store = store
        self._registry: Registry | None = None
        self._registry_id: bytes | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self.refresh()
        assert self._registry is not None
        return self._registry

    def refresh(self) -> None:
        """Load the published registry snapshot (a sync must have run against this store)."""
        snapshot, registry_id = self.store.read_registry(keys.registry_key(self.store.prefix))
        if snapshot is None:
            raise FeaturemartError(f"no registry published in the online store at {self.store.url} "
                                   f"(key {keys.registry_key(self.store.prefix)}): run `featuremart sync` first")
        self._registry = Registry.from_snapshot(snapshot)
        self._registry_id = registry_id

    def get(self, entities: Sequence[Mapping[str, Any]], *, service: str | None = None,
            features: Iterable[str] | None = None, now: datetime | None = None) -> list[dict[str, FeatureValue]]:
        """One dict per entity, mapping each output name (see registry.output_names) to its FeatureValue."""
        for _ in range(3):
            registry = self.registry
            wanted = registry.resolve(service=service, features=None if features is None else list(features))
            plan = _plan(registry, wanted, entities, self.store.prefix)
            raw = self.store.mget([keys.registry_id_key(self.store.prefix), *plan.keys])
            if raw[0] == self._registry_id:
                return plan.decode(raw[1:], now or datetime.now(timezone.utc))
            self.refresh()  # a sync published a new registry between our reads: read again with it
        raise FeaturemartError("the registry changed three times during one read; is a sync looping?")


@dataclass
class _Plan:
    keys: list[str]
    views: list[FeatureView]
    columns: list[tuple[str, int, int]]  # (output name, view index, feature position in stored value)
    n_entities: int

    def decode(self, values: list[bytes | None], now: datetime) -> list[dict[str, FeatureValue]]:
        decoders = [decoder([f.dtype for f in v.features]) for v in self.views]
        nv = len(self.views)
        out = []
        for e in range(self.n_entities):
            rows = []
            for i, view in enumerate(self.views):
                raw = values[e * nv + i]
                if raw is None:
                    rows.append(None)
                    continue
                ts, vals = decoders[i](raw)
                rows.append((ts, vals, ts >= now - view.ttl))
            record = {}
            for name, vi, pos in self.columns:
                row = rows[vi]
                if row is None:
                    record[name] = FeatureValue(None, None, MISSING)
                elif row[2]:
                    record[name] = FeatureValue(row[1][pos], row[0], PRESENT)
                else:
                    record[name] = FeatureValue(None, row[0], EXPIRED)
            out.append(record)
        return out


def _plan(registry: Registry, wanted: list[Feature], entities: Sequence[Mapping[str, Any]], prefix: str) -> _Plan:
    views = [registry.view(name) for name in dict.fromkeys(f.view for f in wanted)]
    positions = {v.name: {f.name: i for i, f in enumerate(v.features)} for v in views}
    index = {v.name: i for i, v in enumerate(views)}
    names = output_names(wanted, reserved=[k for v in views for k in v.key_names])
    columns = [(n, index[f.view], positions[f.view][f.name]) for n, f in zip(names, wanted)]
    all_keys = []
    for entity in entities:
        for view in views:
            pairs = []
            for key, key_type in view.join_keys:
                if key not in entity:
                    raise UnknownNameError(
                        f"feature view {view.name} needs entity key {key!r}; the entity gives "
                        f"{', '.join(entity) or 'no keys'}"
                    )
                pairs.append((key, _typed_key(entity[key], key, key_type)))
            all_keys.append(keys.row_key(prefix, view.name, view.version, pairs))
    return _Plan(all_keys, views, columns, len(entities))


def _typed_key(value: Any, key: str, key_type: str) -> Any:
    if key_type == "int" and not isinstance(value, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise UnknownNameError(f"entity key {key} is an int key; got {value!r}") from None
    if key_type == "string" and not isinstance(value, str):
        raise UnknownNameError(f"entity key {key} is a string key; got {value!r} ({type(value).__name__})")
    return value
