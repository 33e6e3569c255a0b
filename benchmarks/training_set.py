"""Training-set build: Feast point-in-time join (DuckDB offline store) vs plain pandas.merge_asof.

Both join every labelled application of the same parquet files with the latest snapshot at or
before the application time within each view's TTL, and compute the two on-demand ratios.

    uv run python -m benchmarks.training_set --customers 100000 --customers 1000000
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import BENCH_ROOT, prepare
from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.features.store import apply_features, get_historical_features, get_store
from mlstack.settings import Settings

ENTITY_COLUMNS = [
    "application_id",
    "customer_id",
    "zipcode",
    "event_timestamp",
    "loan_amount",
    "loan_term_months",
    "loan_purpose",
    "defaulted",
]
VIEWS = {  # view -> (join key, ttl days, feature columns); as in feature_store/feature_views.py
    "customer_profile": ("customer_id", 90, ["age", "annual_income", "employment_length_years", "home_ownership"]),
    "credit_history": (
        "customer_id",
        45,
        [
            "credit_utilisation",
            "open_accounts",
            "delinquencies_2y",
            "bureau_score",
            "monthly_debt_payments",
            "accounts_in_collections",
        ],
    ),
    "zipcode_stats": ("zipcode", 62, ["median_income", "unemployment_rate", "population", "regional_default_rate"]),
}


def entity_frame(settings: Settings) -> pd.DataFrame:
    """Every labelled application: the entity rows of the training set."""
    return pd.read_parquet(settings.data_dir / LOAN_APPLICATIONS_FILE, columns=ENTITY_COLUMNS)


def merge_asof_join(settings: Settings, entities: pd.DataFrame) -> pd.DataFrame:
    """The same point-in-time join in plain pandas: backward merge_asof per view, with TTL tolerance."""
    out = entities.sort_values("event_timestamp", kind="stable")
    for view, (key, ttl_days, columns) in VIEWS.items():
        snapshots = pd.read_parquet(
            settings.data_dir / f"{view}.parquet", columns=[key, "event_timestamp", "created_timestamp", *columns]
        ).sort_values(["event_timestamp", "created_timestamp"], kind="stable")
        snapshots = snapshots.rename(columns={"event_timestamp": "_snapshot_ts"}).drop(columns="created_timestamp")
        out = pd.merge_asof(
            out,
            snapshots,
            left_on="event_timestamp",
            right_on="_snapshot_ts",
            by=key,
            direction="backward",
            tolerance=pd.Timedelta(timedelta(days=ttl_days)),
        ).drop(columns="_snapshot_ts")
    income = out["annual_income"].where(out["annual_income"] > 0)
    out["loan_to_income"] = out["loan_amount"] / income
    out["payment_to_income"] = (out["loan_amount"] / out["loan_term_months"] + out["monthly_debt_payments"]) / (
        income / 12
    )
    return out


def main() -> None:
    """Time both joins for each size and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="sizes (repeatable); default 100000")
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    args = parser.parse_args()
    print("| customers | labelled rows | Feast (s) | merge_asof (s) | Feast ÷ merge_asof | rows agree | values agree |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for customers in args.customers or [100_000]:
        settings = prepare(customers, args.root)
        store = get_store(settings)
        apply_features(store, settings.feature_repo)
        entities = entity_frame(settings)

        started = time.perf_counter()
        feast_frame = get_historical_features(store, entities)
        feast_s = time.perf_counter() - started

        started = time.perf_counter()
        pandas_frame = merge_asof_join(settings, entities)
        pandas_s = time.perf_counter() - started

        feast_sorted = feast_frame.sort_values("application_id").reset_index(drop=True)
        pandas_sorted = pandas_frame.sort_values("application_id").reset_index(drop=True)
        values_agree = all(
            _same(feast_sorted[column], pandas_sorted[column]) for _, _, columns in VIEWS.values() for column in columns
        ) and all(_same(feast_sorted[ratio], pandas_sorted[ratio]) for ratio in ("loan_to_income", "payment_to_income"))
        print(
            f"| {customers:,} | {len(entities):,} | {feast_s:.1f} | {pandas_s:.1f} | {feast_s / pandas_s:.2f} "
            f"| {len(feast_frame) == len(pandas_frame) == len(entities)} "
            f"({len(feast_frame):,} / {len(pandas_frame):,}) "
            f"| {values_agree} |",
            flush=True,
        )


def _same(a: pd.Series, b: pd.Series) -> bool:
    if a.dtype.kind in "fiu" or b.dtype.kind in "fiu":
        return bool(np.allclose(a.astype("float64"), b.astype("float64"), equal_nan=True, rtol=1e-9))
    return bool((a.fillna("<NA>").astype(str) == b.fillna("<NA>").astype(str)).all())


if __name__ == "__main__":
    main()
