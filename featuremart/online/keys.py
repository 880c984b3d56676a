"""The online key format (docs/redis-format.md), on the read side. `featuremart.sql` builds the same keys in SQL.

    <prefix>:{<key1>=<value1>[,<key2>=<value2>...]}:<view>:<version>

The `{...}` part is a Redis Cluster hash tag: every key of one entity (and of one composite entity) lives in
one hash slot. Key values are percent-escaped where they would clash with the delimiters. Bookkeeping keys
(`meta_key`) share another tag, `{<prefix>}`, so they all live in one slot.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

# Order matters: '%' first, so that escapes are not escaped again.
ESCAPES = (("%", "%25"), (",", "%2C"), ("=", "%3D"), ("{", "%7B"), ("}", "%7D"))


def escape(value: str) -> str:
    for char, code in ESCAPES:
        value = value.replace(char, code)
    return value


def key_text(value: Any) -> str:
    """A key value as the warehouse renders it with CAST(... AS TEXT): ints in decimal, strings as they are."""
    if isinstance(value, bool):
        raise TypeError("entity key values are strings or integers, not booleans")
    return escape(str(value))


_INT = re.compile(r"[+-]?[0-9]+")


def parse_int(text: str) -> int | None:
    """An int key given as text (the CLI's `customer_id=42`), or None when it is not a decimal integer.

    ASCII digits only: `str.isdigit()` also accepts `²` or `١`, which `int()` refuses or reads differently.
    """
    text = text.strip()
    return int(text) if _INT.fullmatch(text) else None


def entity_tag(pairs: Sequence[tuple[str, Any]]) -> str:
    """The hash tag of an entity: `{customer_id=C123}` or `{customer_id=C1,merchant_id=M4}`."""
    return "{" + ",".join(f"{name}={key_text(value)}" for name, value in pairs) + "}"


def row_key(prefix: str, view: str, version: str, pairs: Sequence[tuple[str, Any]]) -> str:
    return f"{prefix}:{entity_tag(pairs)}:{view}:{version}"


def meta_key(prefix: str, name: str) -> str:
    """A bookkeeping key: `<prefix>:meta:{<prefix>}:<name>`. Every bookkeeping key (registry, ids, lock, runs, and
    any added later: build them here) shares the hash tag `{<prefix>}`, so on a Redis Cluster they all live in one
    slot, as the sync's fenced Lua script and MULTI/EXEC need. They start with `<prefix>:meta:`, never `<prefix>:{`,
    so the SCAN of value keys (`row_key_pattern`) and `parse_row_key` never match them.
    """
    return f"{prefix}:meta:{{{prefix}}}:{name}"


def registry_key(prefix: str) -> str:
    """The registry snapshot a sync publishes (JSON): what online readers need to read features."""
    return meta_key(prefix, "registry")


def runs_key(prefix: str) -> str:
    """A list of sync run records, newest first."""
    return meta_key(prefix, "runs")


def published_key(prefix: str) -> str:
    """What each published view holds online (JSON), moved with the generation at a sync's seal: per view its
    last publish, newest event time and live entity count (read by `featuremart status` and `/metrics`)."""
    return meta_key(prefix, "published")


def registry_id_key(prefix: str) -> str:
    """The id of the published registry snapshot, read with every batch of values to notice a new one."""
    return meta_key(prefix, "registry:id")


def store_id_key(prefix: str) -> str:
    """A random id of the store's contents: it disappears with them (flush, new server)."""
    return meta_key(prefix, "store_id")


def generation_key(prefix: str) -> str:
    """The id of the last sync that completed on this store; its sync state records the same id."""
    return meta_key(prefix, "generation")


def masters_key(prefix: str) -> str:
    """On a Redis Cluster: every master's run_id when the last sync completed (JSON), to notice one that
    restarted or failed over since (the store_id lives on one master only)."""
    return meta_key(prefix, "masters")


def lock_key(prefix: str, name: str) -> str:
    """A lock (`SET NX PX`), e.g. `lock:sync`: one sync at a time."""
    return meta_key(prefix, f"lock:{name}")


def state_index_key(prefix: str) -> str:
    """The durable sync state's index (JSON): the store generation it describes and each view's record token."""
    return meta_key(prefix, "state")


def view_state_key(prefix: str, view: str) -> str:
    """A view's durable sync state record (JSON). The `{view}` hash tag keeps it beside its parts on a cluster."""
    return f"{prefix}:state:{{{view}}}"


def view_state_part_key(prefix: str, view: str, token: str, part: int) -> str:
    """Part `part` (0, 1, ...) of a view's exported state (Parquet bytes) uploaded by the sync run `token`."""
    return f"{prefix}:state:{{{view}}}:{token}:{part}"


def stats_key(prefix: str, view: str) -> str:
    """A view's statistics history (a list of JSON records, newest first; docs/monitoring.md)."""
    return f"{prefix}:stats:{{{view}}}"


def row_key_pattern(prefix: str) -> str:
    """The SCAN glob of every feature value key (`parse_row_key` then checks the whole shape)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":{*"


_VERSION = re.compile(r"[0-9a-f]{8}")
_VIEW = re.compile(r"[\w\-]+")


def parse_row_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(view, version) of a feature value key `<prefix>:{...}:<view>:<version>`, or None for any other key.

    Only keys of exactly this shape are ever deleted by a sweep; a colon may occur inside the entity part,
    never in the view name or version, so the key is split from the right.
    """
    head, view, version = (key.rsplit(":", 2) + ["", ""])[:3] if key.count(":") >= 2 else ("", "", "")
    if not (head.startswith(prefix + ":{") and head.endswith("}")) or len(head) <= len(prefix) + 3:
        return None
    tag = head[len(prefix) + 1:]
    if "{" in tag[1:-1] or "}" in tag[1:-1] or "=" not in tag:
        return None
    if not _VIEW.fullmatch(view) or not _VERSION.fullmatch(version):
        return None
    return view, version
