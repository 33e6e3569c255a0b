"""Online/offline parity: what materialisation loads into real Redis equals the latest offline values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlstack.features.online_store import RedisTarget
from mlstack.features.store import BATCH_VIEWS, MaterializeResult, get_online_features, materialize_view
from tests.support.feast_repo import (
    RESTATED_CUSTOMERS,
    FeastRepo,
    applied_repo,
    expected_loan_ratios,
    find_mismatches,
    latest_in_window,
)

SAMPLE_CUSTOMERS = 50
STALE_CUSTOMERS = 5  # of the sample: customers whose last credit snapshot is older than the TTL
UNKNOWN_CUSTOMER = 10**9
ODFV_FEATURES = ["loan_to_income", "payment_to_income"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisTarget) -> Iterator[FeastRepo]:
    with applied_repo(tmp_path_factory.mktemp("parity-state"), redis_server) as applied:
        yield applied


@pytest.fixture(scope="module")
def materialized(repo: FeastRepo) -> dict[str, tuple[MaterializeResult, datetime, datetime]]:
    """Each batch view materialised up to now: its result and the window Feast recorded."""
    end = datetime.now(UTC)
    loaded = {}
    for name in BATCH_VIEWS:
        result = materialize_view(repo.store, name, end)
        start, recorded_end = repo.store.get_feature_view(name).materialization_intervals[-1]
        loaded[name] = (result, start, recorded_end)
    return loaded


@pytest.fixture(scope="module")
def expected(repo: FeastRepo, materialized: dict) -> dict[str, pd.DataFrame]:
    """Per view, the latest snapshot per key inside the materialised window (what Redis should hold)."""
    return {name: latest_in_window(repo.views[name], start, end) for name, (_, start, end) in materialized.items()}


@pytest.fixture(scope="module")
def entity_rows(repo: FeastRepo, expected: dict[str, pd.DataFrame]) -> list[dict]:
    """~50 customers with their latest zipcode and a loan request.

    Fresh customers (both views within TTL) include the restated ones; a few more have a profile
    within TTL but a last credit snapshot older than the credit TTL, so credit must be null online.
    """
    profile = repo.views["customer_profile"].snapshots.sort_values("event_timestamp")
    latest_zipcode = profile.groupby("customer_id")["zipcode"].last()
    profile_fresh = set(expected["customer_profile"].index)
    credit_fresh = set(expected["credit_history"].index)
    stale = sorted(profile_fresh - credit_fresh)[:STALE_CUSTOMERS]
    restated = [c for c in RESTATED_CUSTOMERS if c in profile_fresh & credit_fresh]
    others = sorted(profile_fresh & credit_fresh - set(restated))
    rng = np.random.default_rng(11)
    picked = rng.choice(others, SAMPLE_CUSTOMERS - len(restated) - len(stale), replace=False)
    chosen = [*restated, *stale, *picked.tolist()]
    return [
        {
            "customer_id": int(customer_id),
            "zipcode": str(latest_zipcode[customer_id]),
            "loan_amount": float(rng.integers(1, 60) * 1000),
            "loan_term_months": int(rng.choice([36, 60])),
            "loan_purpose": "debt_consolidation",
        }
        for customer_id in chosen
    ]


def test_materialize_loads_one_row_per_key_from_ttl_window(
    repo: FeastRepo, materialized: dict, expected: dict[str, pd.DataFrame]
) -> None:
    for name, (result, start, end) in materialized.items():
        assert end == result.end
        # The first incremental window starts at (Feast's own) now - TTL: a few seconds after end - TTL.
        assert timedelta(0) <= start - (result.end - repo.views[name].ttl) < timedelta(minutes=1), name
        assert result.rows == len(expected[name]) > 0, name
    credit = expected["credit_history"]
    assert len(credit) < repo.views["credit_history"].snapshots["customer_id"].nunique()


def test_online_features_match_latest_offline_values_within_ttl(
    repo: FeastRepo, expected: dict[str, pd.DataFrame], entity_rows: list[dict]
) -> None:
    online = get_online_features(repo.store, entity_rows)
    assert online["customer_id"].tolist() == [row["customer_id"] for row in entity_rows]
    requests = pd.DataFrame(entity_rows)
    want = requests[["customer_id", "zipcode"]].copy()
    for name in BATCH_VIEWS:
        view = repo.views[name]
        values = expected[name][view.features].reindex(requests[view.key])
        want[view.features] = values.to_numpy()
        nulls = values.isna().all(axis=1).sum()
        assert nulls == (STALE_CUSTOMERS if name == "credit_history" else 0), name
    want[ODFV_FEATURES] = expected_loan_ratios(
        requests["loan_amount"],
        requests["loan_term_months"],
        want["annual_income"],
        want["monthly_debt_payments"],
    ).to_numpy()

    features = [feature for name in BATCH_VIEWS for feature in repo.views[name].features] + ODFV_FEATURES
    assert set(features) <= set(online.columns)
    mismatches = find_mismatches(want, online, features)
    assert mismatches.empty, f"{len(mismatches)} mismatches, first:\n{mismatches.head(20).to_string()}"

    # Restated snapshots (same event time, later created time) win online too.
    restated_last = repo.restated.iloc[1::2].set_index("customer_id")
    restated = [c for c in RESTATED_CUSTOMERS if c in set(online["customer_id"])]
    assert len(restated) >= 3
    got = online.set_index("customer_id").loc[restated, "bureau_score"]
    assert got.tolist() == restated_last.loc[restated, "bureau_score"].tolist()


def test_online_features_return_nulls_for_unknown_entity(
    repo: FeastRepo, materialized: dict, entity_rows: list[dict]
) -> None:
    unknown = {**entity_rows[0], "customer_id": UNKNOWN_CUSTOMER, "zipcode": "00000"}
    online = get_online_features(repo.store, [unknown, entity_rows[0]])
    assert online["customer_id"].tolist() == [UNKNOWN_CUSTOMER, entity_rows[0]["customer_id"]]
    features = [feature for name in BATCH_VIEWS for feature in repo.views[name].features] + ODFV_FEATURES
    assert online.loc[0, features].isna().all()
    assert online.loc[1, repo.views["customer_profile"].features].notna().all()
