"""Print the keys of one customer × merchant pair with recent activity, as `featuremart get` arguments.

Used by `make demo` to show the fraud model's features for an entity that exists in the generated data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb


def main(path: str = "target/featuremart.duckdb") -> None:
    con = duckdb.connect(str(Path(path)), read_only=True)
    try:
        customer, merchant = con.sql(
            "select customer_id, merchant_id from main.customer_merchant_pair "
            "order by event_ts desc, pair_txn_count_30d desc, customer_id, merchant_id limit 1"
        ).fetchall()[0]
    finally:
        con.close()
    print(f"customer_id={customer} merchant_id={merchant}")


if __name__ == "__main__":
    main(*sys.argv[1:])
