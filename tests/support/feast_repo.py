"""Shared setup and reference checks of the Feast integration tests.

Setup: small generated data in a temp state dir, the real Feast repo applied against it, and a real
Redis logical DB held for one test module (materialising once per module is what keeps these fast).

Reference checks are pure pandas: what a point-in-time join and a materialisation *should* return,
computed straight from the parquet snapshots, and a comparison that lists every differing value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore

from mlstack.data.generator import generate_data
from mlstack.data.schema import CREDIT_HISTORY_FILE, LOAN_APPLICATIONS_FILE
from mlstack.features.online_store import RedisTarget, make_client
from mlstack.features.store import BATCH_VIEWS, apply_features, feast_environment, get_store
from mlstack.settings import Settings
from tests.support.factories import DBS, make_settings

CUSTOMERS = 1500
MONTHS = 12
SEED = 7
# Customers whose credit snapshots get a restatement (same event_timestamp, later created_timestamp).
RESTATED_CUSTOMERS = (11, 12, 13, 14, 15)


@dataclass(frozen=True)
class ViewSpec:
    """A batch feature view as registered: join key, TTL, feature names and its raw parquet rows."""

    name: str
    key: str
    ttl: timedelta
    features: list[str]
    snapshots: pd.DataFrame


@dataclass(frozen=True)
class FeastRepo:
    """The applied repo of one test module and the raw data behind it."""

    settings: Settings
    store: FeatureStore
    target: RedisTarget
    data_end: datetime
    views: dict[str, ViewSpec]
    applications: pd.DataFrame
    restated: pd.DataFrame  # the credit snapshots appended by `restate_snapshots`


def utc_midnight_today() -> datetime:
    """Today's 00:00 UTC: data ends near now, as materialize_incremental starts at now - TTL."""
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


@contextlib.contextmanager
def held_db_and_environment(settings: Settings, target: RedisTarget) -> Iterator[None]:
    """Empty `target` before and after the block, and restore the Feast variables `get_store` sets."""
    client = make_client(target, settings)
    client.flushdb()
    saved_env = {name: os.environ.get(name) for name in feast_environment(settings, target)}
    try:
        yield
    finally:
        client.flushdb()
        client.close()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def view_specs(store: FeatureStore, data_dir: Path) -> dict[str, ViewSpec]:
    """Each batch view's key, TTL and features from the registry, with its raw snapshots."""
    views = {}
    for name in BATCH_VIEWS:
        view = store.get_feature_view(name)
        (key,) = [column.name for column in view.entity_columns]
        snapshots = pd.read_parquet(data_dir / f"{name}.parquet")
        views[name] = ViewSpec(name, key, view.ttl, [feature.name for feature in view.features], snapshots)
    return views


@contextlib.contextmanager
def applied_repo(state_dir: Path, redis_server: RedisTarget) -> Iterator[FeastRepo]:
    """Generate data, apply the real repo, and hold an emptied Redis DB until the block exits."""
    # A logical DB from the same cycle as conftest's `redis_db`, held for a whole module.
    target = redis_server.with_db(next(DBS))
    settings = make_settings(state_dir, target)
    with held_db_and_environment(settings, target):
        data_end = utc_midnight_today()
        generate_data(settings.data_dir, customers=CUSTOMERS, months=MONTHS, end=data_end, seed=SEED)
        restated = restate_snapshots(settings.data_dir / CREDIT_HISTORY_FILE, RESTATED_CUSTOMERS)
        store = get_store(settings, target)
        apply_features(store, settings.feature_repo)
        views = view_specs(store, settings.data_dir)
        applications = pd.read_parquet(settings.data_dir / LOAN_APPLICATIONS_FILE)
        yield FeastRepo(settings, store, target, data_end, views, applications, restated)


def restate_snapshots(path: Path, customer_ids: Sequence[int]) -> pd.DataFrame:
    """Append a corrected copy (created 1 h later, other values) of two snapshots per customer.

    The restated copies of each customer's last and middle snapshot share their event_timestamp with
    the original, so only the created_timestamp tie-break picks them. Returns the appended rows.
    """
    table = pq.read_table(path)
    frame = table.to_pandas()
    picked = []
    for customer_id in customer_ids:
        own = frame[frame["customer_id"] == customer_id].sort_values("event_timestamp")
        picked += [own.iloc[len(own) // 2], own.iloc[-1]]
    restated = pd.DataFrame(picked).reset_index(drop=True)
    restated["created_timestamp"] += pd.Timedelta(hours=1)
    restated["credit_utilisation"] = (restated["credit_utilisation"] + 0.0123).round(4)
    restated["open_accounts"] += 1
    restated["bureau_score"] -= 7
    restated["monthly_debt_payments"] += 11.11
    appended = pa.Table.from_pandas(restated, schema=table.schema, preserve_index=False)
    tmp = path.with_suffix(".restated.tmp")
    pq.write_table(pa.concat_tables([table, appended]), tmp)
    os.replace(tmp, path)
    return restated


# --------------------------------------------------------------------------- reference checks


def point_in_time_reference(entity_df: pd.DataFrame, view: ViewSpec, *, row_key: str = "row_key") -> pd.DataFrame:
    """Expected features of one view per entity row, indexed by ``row_key``.

    Latest snapshot with ``event_timestamp <= t`` and ``t - event_timestamp <= ttl`` (ties on
    event_timestamp go to the latest created_timestamp), else nulls. Adds ``_snapshot_ts``.
    """
    left = entity_df[[row_key, view.key, "event_timestamp"]].sort_values("event_timestamp")
    right = (
        view.snapshots[[view.key, "event_timestamp", "created_timestamp", *view.features]]
        .rename(columns={"event_timestamp": "_snapshot_ts"})
        # merge_asof takes the last of equal keys: sorting by created makes that the latest ingested.
        .sort_values(["_snapshot_ts", "created_timestamp"], kind="stable")
    )
    joined = pd.merge_asof(
        left,
        right,
        left_on="event_timestamp",
        right_on="_snapshot_ts",
        by=view.key,
        direction="backward",
        allow_exact_matches=True,
    )
    fresh = (joined["event_timestamp"] - joined["_snapshot_ts"]) <= pd.Timedelta(view.ttl)
    joined[[*view.features, "_snapshot_ts"]] = joined[[*view.features, "_snapshot_ts"]].where(fresh, None)
    return joined.set_index(row_key)[[*view.features, "_snapshot_ts"]]


def future_peeking_join(entity_df: pd.DataFrame, view: ViewSpec, *, row_key: str = "row_key") -> pd.DataFrame:
    """A deliberately wrong join: every row gets its key's *last* snapshot, whatever its time."""
    last = (
        view.snapshots.sort_values(["event_timestamp", "created_timestamp"], kind="stable")
        .groupby(view.key)
        .tail(1)[[view.key, *view.features]]
    )
    return entity_df[[row_key, view.key]].merge(last, on=view.key, how="left").set_index(row_key)[view.features]


def latest_in_window(view: ViewSpec, start: datetime, end: datetime) -> pd.DataFrame:
    """Expected online values of one view: the latest snapshot per key with start <= event_ts <= end."""
    window = view.snapshots[(view.snapshots["event_timestamp"] >= start) & (view.snapshots["event_timestamp"] <= end)]
    latest = window.sort_values(["event_timestamp", "created_timestamp"], kind="stable").groupby(view.key).tail(1)
    return latest.set_index(view.key)[[*view.features, "event_timestamp"]]


def expected_loan_ratios(
    loan_amount: pd.Series,
    loan_term_months: pd.Series,
    annual_income: pd.Series,
    monthly_debt_payments: pd.Series,
) -> pd.DataFrame:
    """The on-demand features from their inputs (NaN where an input is missing or the income is not positive)."""
    income = pd.to_numeric(annual_income, errors="coerce").astype("float64")
    income = income.where(income > 0)
    debt = pd.to_numeric(monthly_debt_payments, errors="coerce").astype("float64")
    amount = loan_amount.astype("float64")
    return pd.DataFrame(
        {
            "loan_to_income": amount / income,
            "payment_to_income": (amount / loan_term_months.astype("float64") + debt) / (income / 12.0),
        }
    )


def find_mismatches(
    expected: pd.DataFrame, actual: pd.DataFrame, features: Sequence[str], *, rtol: float = 1e-9
) -> pd.DataFrame:
    """Every (row, feature) whose values differ; both frames indexed alike. Nulls equal only nulls.

    Returns columns ``row``, ``feature``, ``expected``, ``actual`` (empty when all agree).
    """
    missing_rows = expected.index.difference(actual.index)
    if len(missing_rows):
        raise AssertionError(f"rows missing from the actual frame: {list(missing_rows)[:10]}")
    actual = actual.loc[expected.index]
    found = []
    for feature in features:
        want, got = expected[feature], actual[feature]
        both_null = want.isna().to_numpy() & got.isna().to_numpy()
        present = want.notna().to_numpy() & got.notna().to_numpy()
        numeric_want = pd.to_numeric(want, errors="coerce")
        numeric_got = pd.to_numeric(got, errors="coerce")
        if numeric_want.notna().sum() == want.notna().sum() and numeric_got.notna().sum() == got.notna().sum():
            same = np.isclose(
                numeric_want.to_numpy(dtype="float64"),
                numeric_got.to_numpy(dtype="float64"),
                rtol=rtol,
                atol=1e-12,
            )
        else:
            same = want.astype(str).to_numpy() == got.astype(str).to_numpy()
        bad = ~(both_null | (present & same))
        for row in np.flatnonzero(bad):
            found.append(
                {
                    "row": expected.index[row],
                    "feature": feature,
                    "expected": want.iloc[row],
                    "actual": got.iloc[row],
                }
            )
    return pd.DataFrame(found, columns=["row", "feature", "expected", "actual"])


def generated_data_dir(directory: Path, customers: int, seed: int) -> Path:
    """Small generated data ending today (midnight UTC), 12 months, in ``directory``/data; returns that dir."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    generate_data(directory / "data", customers=customers, months=12, end=today, seed=seed)
    return directory / "data"


def project_store(state: Path, target: RedisTarget, data_dir: Path, **overrides: object) -> FeatureStore:
    """The project's Feast repo applied in its own state dir (own registry) over shared data, on ``target``."""
    settings = make_settings(state, target, **overrides)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if not settings.data_dir.exists():
        os.symlink(data_dir, settings.data_dir)
    store = get_store(settings, target)
    apply_features(store, settings.feature_repo)
    return store


# Every hash of a Redis DB: its fields and values in stored order, and whether the key expires.
Dump = dict[bytes, tuple[list[tuple[bytes, bytes]], bool]]


def dump(target: RedisTarget) -> Dump:
    """Every hash in the DB: its fields and values in stored order, and whether the key expires."""
    client = make_client(target, Settings(redis_socket_timeout=30.0))
    keys = list(client.scan_iter(count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
            pipe.ttl(key)
        replies = pipe.execute()
    return {key: (list(replies[2 * i].items()), replies[2 * i + 1] > 0) for i, key in enumerate(keys)}


def differences(expected: Dump, actual: Dump) -> list[tuple[bytes, bytes | None, object, object]]:
    """(key, field, expected, actual) of every difference; field None for a key-level one."""
    found: list[tuple[bytes, bytes | None, object, object]] = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in expected or key not in actual:
            found.append((key, None, key in expected, key in actual))
            continue
        (want, want_ttl), (got, got_ttl) = expected[key], actual[key]
        # Field order is not content: a hash with long values is a hashtable in Redis, iterated in bucket
        # order, which any read (the materialisation's read-back HMGET) can change by a rehash step.
        if sorted(field for field, _ in want) != sorted(field for field, _ in got):
            found.append((key, None, sorted(f for f, _ in want), sorted(f for f, _ in got)))
        got_values = dict(got)
        found += [(key, field, value, got_values.get(field)) for field, value in want if got_values.get(field) != value]
        if want_ttl != got_ttl:
            found.append((key, b"<ttl>", want_ttl, got_ttl))
    return found
