"""Deterministic card-payments data for the reference project: customers, merchants, transactions.

The data is a pure function of ``(customers, seed, as_of)``: the same arguments always give the same rows,
in the same order. Timestamps are UTC, without time zone, and lie in the 60 days before ``as_of`` 00:00
(transactions) or the years before it (signups, merchant openings), so the freshness tests pass on data
generated today.

What the data exercises:

- skew: customer activity follows a negative binomial (many customers barely active, a few very active),
  merchant popularity a power law, and each customer returns to a few favourite merchants;
- nulls: missing customer and merchant countries, missing MCCs, missing bios;
- unicode, quotes, commas, backslashes and newlines in free text (``customers.bio``);
- late-arriving rows: ``ingested_at`` hours to days after ``txn_ts`` for about 3% of transactions;
- declined transactions and chargebacks (concentrated on a few risky merchants).

Example:
    >>> from pathlib import Path
    >>> generate(Path("data/raw"), customers=2000, seed=42)  # doctest: +SKIP
    {'customers': 2000, 'merchants': 100, 'transactions': 9874}

CLI: ``python -m demo.generate --out data/raw --customers 2000 --seed 42 [--as-of YYYY-MM-DD]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HISTORY_DAYS = 60
MEAN_TXNS_PER_CUSTOMER = 5.0
# Negative binomial shape: the smaller, the more skewed (about a third of customers have no transaction).
ACTIVITY_SHAPE = 0.4
CUSTOMERS_PER_MERCHANT = 20
FAVOURITE_MERCHANTS = 3

COUNTRIES = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "JP", "BR", "CA"]
COUNTRY_WEIGHTS = [0.35, 0.12, 0.1, 0.08, 0.05, 0.06, 0.05, 0.07, 0.07, 0.05]
CURRENCY_BY_COUNTRY = ["USD", "GBP", "EUR", "EUR", "EUR", "EUR", "EUR", "JPY", "BRL", "CAD"]
CHANNELS = ["web", "ios", "android", "partner", "branch"]
CHANNEL_WEIGHTS = [0.35, 0.25, 0.25, 0.1, 0.05]
# (category, typical amount multiplier, merchant-category codes)
CATEGORIES = [
    ("grocery", 1.0, ["5411", "5422", "5499"]),
    ("fuel", 1.5, ["5541", "5542"]),
    ("restaurants", 0.9, ["5812", "5813", "5814"]),
    ("travel", 6.0, ["3000", "4511", "7011"]),
    ("electronics", 4.0, ["5732", "5734"]),
    ("apparel", 2.0, ["5651", "5691"]),
    ("entertainment", 1.2, ["7832", "7841", "7922"]),
    ("health", 1.8, ["0742", "5912", "8011"]),
]
CATEGORY_WEIGHTS = [0.22, 0.12, 0.2, 0.06, 0.08, 0.12, 0.1, 0.1]
BIOS = [
    "Loves café culture ☕",
    "東京在住のエンジニア",
    "Zürich → Lisboa, usually by train 🚆",
    'Says "hello", often',
    "Collects vinyl; plays bass",
    "multi-line bio:\nsecond line",
    "Ñandú enthusiast — «quoted» and \\backslashed\\",
    "emoji only 🎉🎉🎉",
    "Small-business owner, 3 shops",
    "",
    "Москва / Київ / Warszawa",
    "tab\tseparated",
]


def _ids(prefix: str, n: int, width: int) -> pa.Array:
    """``prefix`` + zero-padded ``0..n-1``: ``C0000123``, ``M00045``."""
    digits = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(digits, width=width, padding="0"), "")


def _pick(values: list[str], index: np.ndarray, null_mask: np.ndarray | None = None) -> pa.Array:
    """``values[index]`` as a string array, null where ``null_mask`` is set."""
    return pa.array(values, pa.string()).take(pa.array(index, pa.int32(), mask=null_mask))


def _timestamps(as_of_us: int, seconds_before: np.ndarray) -> pa.Array:
    return pa.array(as_of_us - seconds_before.astype(np.int64) * 1_000_000, pa.timestamp("us"))


def generate(
    out_dir: Path,
    customers: int = 2000,
    seed: int = 42,
    as_of: dt.date | None = None,
) -> dict[str, int]:
    """Write ``customers.parquet``, ``merchants.parquet`` and ``transactions.parquet`` into ``out_dir``.

    Args:
        out_dir: Directory to write into (created if missing); existing files are replaced.
        customers: Number of customers; merchants are ``customers // 20`` (at least 1) and transactions
            about 5 per customer over the 60 days before ``as_of``.
        seed: Seed of the pseudo-random generator.
        as_of: The day the data ends (exclusive, 00:00 UTC). Defaults to today (UTC).

    Returns:
        The number of rows written per table.
    """
    if customers < 1:
        raise ValueError(f"generate: customers must be at least 1, got {customers}")
    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    as_of_us = int(
        (dt.datetime.combine(as_of, dt.time()) - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    customer_rng, merchant_rng, txn_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, customers]).spawn(3)
    )
    day = 86_400

    # customers ---------------------------------------------------------------------------------------------
    n_c = customers
    rng = customer_rng
    country_idx = rng.choice(len(COUNTRIES), n_c, p=COUNTRY_WEIGHTS)
    country_null = rng.random(n_c) < 0.03
    # Signups over three years, denser lately (a growing business): there are signups every day.
    signup_before = (1 + rng.random(n_c) ** 2 * 3 * 365 * day).astype(np.int64)
    verify_delay = (60 + rng.exponential(3 * day, n_c)).astype(np.int64)
    verified = (rng.random(n_c) < 0.8) & (verify_delay < signup_before)
    verified_before = np.where(verified, signup_before - verify_delay, 0)
    bio_null = rng.random(n_c) < 0.4
    customers_table = pa.table(
        {
            "customer_id": _ids("C", n_c, max(7, len(str(n_c - 1)))),
            "country": _pick(COUNTRIES, country_idx, country_null),
            "signup_ts": _timestamps(as_of_us, signup_before),
            "signup_channel": _pick(CHANNELS, rng.choice(len(CHANNELS), n_c, p=CHANNEL_WEIGHTS)),
            "is_verified": pa.array(verified),
            "verified_at": pa.array(
                as_of_us - verified_before * 1_000_000, pa.timestamp("us"), mask=~verified
            ),
            "bio": _pick(BIOS, rng.integers(0, len(BIOS), n_c), bio_null),
        }
    )

    # merchants ---------------------------------------------------------------------------------------------
    n_m = max(1, customers // CUSTOMERS_PER_MERCHANT)
    rng = merchant_rng
    category_idx = rng.choice(len(CATEGORIES), n_m, p=CATEGORY_WEIGHTS)
    mcc_codes = [code for _, _, codes in CATEGORIES for code in codes]
    mcc_offsets = np.cumsum([0] + [len(codes) for _, _, codes in CATEGORIES])
    mcc_counts = np.diff(mcc_offsets)
    mcc_idx = mcc_offsets[category_idx] + (rng.random(n_m) * mcc_counts[category_idx]).astype(np.int64)
    # A few merchants are risky: their chargeback rate is an order of magnitude higher.
    merchant_risk = np.where(rng.random(n_m) < 0.03, 0.08, 0.004) * rng.lognormal(0, 0.5, n_m)
    merchants_table = pa.table(
        {
            "merchant_id": _ids("M", n_m, max(5, len(str(n_m - 1)))),
            "category": _pick([name for name, _, _ in CATEGORIES], category_idx),
            "mcc": _pick(mcc_codes, mcc_idx, rng.random(n_m) < 0.05),
            "country": _pick(COUNTRIES, rng.choice(len(COUNTRIES), n_m, p=COUNTRY_WEIGHTS), rng.random(n_m) < 0.02),
            "opened_ts": _timestamps(as_of_us, (HISTORY_DAYS * day + rng.random(n_m) * 10 * 365 * day)),
        }
    )

    # transactions ------------------------------------------------------------------------------------------
    rng = txn_rng
    p = ACTIVITY_SHAPE / (ACTIVITY_SHAPE + MEAN_TXNS_PER_CUSTOMER)
    per_customer = rng.negative_binomial(ACTIVITY_SHAPE, p, n_c)
    customer_idx = np.repeat(np.arange(n_c, dtype=np.int64), per_customer)
    n_t = len(customer_idx)
    # Merchant popularity is a power law; each customer mostly returns to a few favourites.
    favourites = (n_m * rng.random((n_c, FAVOURITE_MERCHANTS)) ** 3).astype(np.int64)
    popular = (n_m * rng.random(n_t) ** 3).astype(np.int64)
    favourite = favourites[customer_idx, rng.integers(0, FAVOURITE_MERCHANTS, n_t)]
    merchant_idx = np.where(rng.random(n_t) < 0.7, favourite, popular)
    # Within the 60 days before as_of, and never before the customer signed up.
    window = np.minimum(HISTORY_DAYS * day, signup_before[customer_idx]) - 1
    txn_before = 1 + (rng.random(n_t) * window).astype(np.int64)
    multiplier = np.array([m for _, m, _ in CATEGORIES])[category_idx[merchant_idx]]
    amount = np.round(rng.lognormal(3.2, 0.9, n_t) * multiplier, 2) + 0.01
    declined = rng.random(n_t) < np.where(amount > 500, 0.15, 0.04)
    chargeback = ~declined & (rng.random(n_t) < merchant_risk[merchant_idx])
    # Ingestion lag: seconds to minutes; hours to three days for ~3% late-arriving rows; never after as_of.
    lag = np.where(rng.random(n_t) < 0.03, rng.integers(3600, 3 * day, n_t), rng.integers(1, 300, n_t))
    ingested_before = np.maximum(txn_before - lag, 0)
    # Chronological order, so that txn_id grows with txn_ts (stable sort: ties keep generation order).
    order = np.argsort(-txn_before, kind="stable")
    customer_country = country_idx[customer_idx[order]]
    currency_idx = np.where(country_null[customer_idx[order]], 0, customer_country)
    transactions_table = pa.table(
        {
            "txn_id": _ids("T", n_t, max(10, len(str(n_t - 1)))),
            "customer_id": customers_table["customer_id"].combine_chunks().take(pa.array(customer_idx[order])),
            "merchant_id": merchants_table["merchant_id"].combine_chunks().take(pa.array(merchant_idx[order])),
            "amount": pa.array(amount[order]).cast(pa.decimal128(12, 2)),
            "currency": _pick(CURRENCY_BY_COUNTRY, currency_idx),
            "txn_ts": _timestamps(as_of_us, txn_before[order]),
            "ingested_at": _timestamps(as_of_us, ingested_before[order]),
            "status": _pick(["approved", "declined"], declined[order].astype(np.int64)),
            "is_chargeback": pa.array(chargeback[order]),
        }
    )

    tables = {"customers": customers_table, "merchants": merchants_table, "transactions": transactions_table}
    for name, table in tables.items():
        pq.write_table(table, out_dir / f"{name}.parquet", compression="zstd")
    return {name: table.num_rows for name, table in tables.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output directory (default data/raw)")
    parser.add_argument("--customers", type=int, default=2000, help="number of customers (default 2000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--as-of",
        type=dt.date.fromisoformat,
        default=None,
        help="last day of data, exclusive, YYYY-MM-DD (default: today, UTC)",
    )
    args = parser.parse_args(argv)
    counts = generate(args.out, customers=args.customers, seed=args.seed, as_of=args.as_of)
    print(", ".join(f"{name}: {rows:,} rows" for name, rows in counts.items()) + f" -> {args.out}")


if __name__ == "__main__":
    main()
