"""Unit tests (no I/O but reading docs): the durable state's key shapes are never taken for feature values, and
the sizing constants the code uses are the ones docs/operations.md gives."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from featuremart.online import keys
from featuremart.online.sizing import KEY_OVERHEAD_BYTES, STATE_BYTES_PER_ENTITY, expected_bytes, human

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_state_keys_are_never_feature_value_keys():
    """A SCAN sweep matches `row_key_pattern` and deletes only what `parse_row_key` accepts: never state keys."""
    for prefix in ("fm", "team:fm"):
        for key in (keys.state_index_key(prefix), keys.view_state_key(prefix, "customer_spend"),
                    keys.view_state_part_key(prefix, "customer_spend", "0123abcd" * 4, 0),
                    keys.view_state_part_key(prefix, "customer_spend", "0123abcd", 12)):
            assert keys.parse_row_key(prefix, key) is None, key
            assert not fnmatch.fnmatchcase(key, keys.row_key_pattern(prefix).replace("\\", "")), key


def test_a_views_state_keys_share_one_cluster_hash_slot():
    tag = re.compile(r"\{([^}]*)\}")
    record = keys.view_state_key("fm", "customer_spend")
    part = keys.view_state_part_key("fm", "customer_spend", "t0", 3)
    assert tag.search(record)[1] == tag.search(part)[1] == "customer_spend"


def test_the_sizing_constants_are_the_documented_ones():
    text = (DOCS / "operations.md").read_text()
    formula = re.search(r"memory ≈ Σ_v entities_v × \((\d+) \+ key_bytes_v \+ value_bytes_v \+ (\d+)\)", text)
    assert formula and (int(formula[1]), int(formula[2])) == (KEY_OVERHEAD_BYTES, STATE_BYTES_PER_ENTITY)
    assert expected_bytes(1_000_000, 41, 86) == 1_000_000 * (KEY_OVERHEAD_BYTES + 41 + 86 + STATE_BYTES_PER_ENTITY)
    assert human(253_000_000) == "253.0 MB" and human(512) == "512 B" and human(10_900) == "10.9 kB"
