"""What featuremart validated or generated, kept for the next process whose inputs did not change.

`features.yml` with the dbt vars, and the registry of a manifest with its warehouse columns, are validated by the
pydantic schema (featuremart.schema): importing pydantic and building its models is the largest part of a
`featuremart sync` or `training-set` start-up after DuckDB's own (0.15-0.3 s CPU, bench/README.md), paid again
by every process for the same files. Both results are pure functions of their inputs, so each is pickled under
the project cache (`load_cache_dir()/validated`), keyed by a hash of every input's bytes and of featuremart's
own source files (an edited validator is a new key). Only a successful validation is kept: an error is found,
and reported, by every run. Best effort: an entry that cannot be read or written only costs the validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, TypeVar

from featuremart.dbtcore import load_cache_dir, prune_cache

T = TypeVar("T")
#: Entries kept (least recently used pruned): a config and a registry per project and manifest.
ENTRIES = 64
_FORMAT = 1
_PACKAGE = Path(__file__).resolve().parent


def _source_stamp() -> list[tuple[str, int, int]]:
    """Featuremart's own modules as (name, mtime, size): validation code that changes makes new keys."""
    found = []
    for entry in os.scandir(_PACKAGE):
        if entry.name.endswith(".py"):
            st = entry.stat()
            found.append((entry.name, st.st_mtime_ns, st.st_size))
    return sorted(found)


def key(kind: str, material: Any) -> str | None:
    """The cache key of `material` (plain JSON), or None when it is not plain JSON (then nothing is cached)."""
    try:
        text = json.dumps([_FORMAT, kind, material, _source_stamp()], sort_keys=True)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(kind: str, material: Any, build: Callable[[], T]) -> T:
    """`build()`'s result, read from the cache when an earlier process built it from the same `material`."""
    name = key(kind, material)
    if name is None:
        return build()
    folder = load_cache_dir() / "validated"
    path = folder / f"{kind}-{name}.pickle"
    try:
        with open(path, "rb") as fh:
            value = pickle.load(fh)
        os.utime(path)  # recently used: pruned last
        return value
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
        pass  # absent, or written by another version: build it
    value = build()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{kind}-{name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        prune_cache(folder, ENTRIES, "*.pickle")
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass
    return value

