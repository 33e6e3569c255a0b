"""Point-in-time correctness of historical features (real Feast repo, DuckDB offline store)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from mlstack.features.online_store import RedisTarget
from mlstack.features.store import BATCH_VIEWS, get_historical_features
from tests.support.feast_repo import (
    FeastRepo,
    applied_repo,
    expected_loan_ratios,
    find_mismatches,
    future_peeking_join,
    point_in_time_reference,
)

ENTITY_COLUMNS = [
    "customer_id",
    "zipcode",
    "event_timestamp",
    "loan_amount",
    "loan_term_months",
    "loan_purpose",
]
SAMPLED_APPLICATIONS = 300
REPEATED_CUSTOMERS = 20


@dataclass(frozen=True)
class EntityRows:
    """The entity dataframe and the row keys of the cases built on purpose."""

    frame: pd.DataFrame
    outcomes: pd.DataFrame  # `defaulted`, `default_timestamp` by row_key, application rows only
    special: dict[str, int]  # case name -> row_key
    restated: list[int]  # row_keys right after a restated snapshot


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisTarget) -> Iterator[FeastRepo]:
    with applied_repo(tmp_path_factory.mktemp("pit-state"), redis_server) as applied:
        yield applied


@pytest.fixture(scope="module")
def entity_rows(repo: FeastRepo) -> EntityRows:
    """Sampled applications, the same customers at other times, one exact duplicate, and edge cases.

    Every application whose default shows in a later snapshot is added to the sample: with 12 months
    of history most defaults fall after the data ends, and only these can leak into a wrong join.
    """
    all_apps = repo.applications
    last_snapshot = repo.views["credit_history"].snapshots.groupby("customer_id")["event_timestamp"].max()
    leak_visible = (all_apps["defaulted"] == 1) & (
        all_apps["default_timestamp"] < all_apps["customer_id"].map(last_snapshot)
    )
    apps = (
        pd.concat([all_apps.sample(SAMPLED_APPLICATIONS, random_state=3), all_apps[leak_visible]])
        .drop_duplicates("application_id")
        .reset_index(drop=True)
    )
    parts = [apps[ENTITY_COLUMNS]]
    repeated = apps.head(REPEATED_CUSTOMERS)[ENTITY_COLUMNS]
    for days in (17, 40, 75):
        parts.append(repeated.assign(event_timestamp=repeated["event_timestamp"] - pd.Timedelta(days=days)))
    duplicate = apps.head(1)[ENTITY_COLUMNS].assign(loan_amount=lambda df: df["loan_amount"] * 2)
    parts.append(duplicate)

    credit = repo.views["credit_history"]
    profile = repo.views["customer_profile"].snapshots
    originals = credit.snapshots.drop_duplicates(["customer_id", "event_timestamp"], keep="first")
    ordered = originals.sort_values(["customer_id", "event_timestamp"])
    gap_after = ordered.groupby("customer_id")["event_timestamp"].diff(-1).abs() > credit.ttl + pd.Timedelta(days=2)
    gap = ordered[gap_after].iloc[0]
    late_joiner = ordered.groupby("customer_id").head(1).sort_values("event_timestamp").iloc[-1]
    exact = ordered.iloc[len(ordered) // 2]

    def zipcode_at(customer_id: int, ts: pd.Timestamp) -> str:
        """The zipcode of the customer's profile at ``ts``, or of their first profile if none yet."""
        own = profile[profile["customer_id"] == customer_id].sort_values("event_timestamp")
        before = own[own["event_timestamp"] <= ts]
        return str(before["zipcode"].iloc[-1] if len(before) else own["zipcode"].iloc[0])

    cases = {
        "gap": (gap, gap["event_timestamp"] + credit.ttl + pd.Timedelta(days=1)),
        "ttl_edge_inside": (gap, gap["event_timestamp"] + credit.ttl),
        "ttl_edge_outside": (gap, gap["event_timestamp"] + credit.ttl + pd.Timedelta(microseconds=1)),
        "before_first_snapshot": (late_joiner, late_joiner["event_timestamp"] - pd.Timedelta(days=1)),
        "at_snapshot": (exact, exact["event_timestamp"]),
    }
    middle = repo.restated.iloc[::2]  # restate_snapshots appends (middle, last) per customer
    for i, snapshot in enumerate(middle.itertuples()):
        cases[f"restated_{i}"] = (snapshot._asdict(), snapshot.event_timestamp + pd.Timedelta(days=1))
    special_rows = [
        {
            "customer_id": int(snapshot["customer_id"]),
            "zipcode": zipcode_at(int(snapshot["customer_id"]), ts),
            "event_timestamp": ts,
            "loan_amount": 12_000.0,
            "loan_term_months": 36,
            "loan_purpose": "car",
        }
        for snapshot, ts in cases.values()
    ]
    parts.append(pd.DataFrame(special_rows))

    frame = pd.concat(parts, ignore_index=True)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    frame["row_key"] = np.arange(len(frame), dtype=np.int64)
    first_special = len(frame) - len(cases)
    special = {name: first_special + i for i, name in enumerate(cases)}
    outcomes = apps[["defaulted", "default_timestamp"]].set_axis(frame["row_key"].iloc[: len(apps)])
    restated = [row for name, row in special.items() if name.startswith("restated_")]
    return EntityRows(frame=frame, outcomes=outcomes, special=special, restated=restated)


@pytest.fixture(scope="module")
def historical(repo: FeastRepo, entity_rows: EntityRows) -> pd.DataFrame:
    return get_historical_features(repo.store, entity_rows.frame.copy())


@pytest.fixture(scope="module")
def reference(repo: FeastRepo, entity_rows: EntityRows) -> dict[str, pd.DataFrame]:
    return {name: point_in_time_reference(entity_rows.frame, repo.views[name]) for name in BATCH_VIEWS}


def test_historical_features_return_one_row_per_entity_row_with_repeated_entities(
    entity_rows: EntityRows, historical: pd.DataFrame
) -> None:
    frame = entity_rows.frame
    assert frame.duplicated(["customer_id", "event_timestamp"]).sum() == 1  # the exact duplicate
    assert frame["customer_id"].duplicated().sum() >= 3 * REPEATED_CUSTOMERS
    assert len(historical) == len(frame)
    counts = historical["row_key"].value_counts()
    assert counts.max() == 1
    assert set(counts.index) == set(frame["row_key"])
    got = historical.set_index("row_key").loc[frame["row_key"], ENTITY_COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, frame[ENTITY_COLUMNS], check_dtype=False)


def test_historical_features_keep_rows_without_features_in_ttl_as_nulls(
    repo: FeastRepo, entity_rows: EntityRows, historical: pd.DataFrame
) -> None:
    out = historical.set_index("row_key")
    credit = repo.views["credit_history"].features
    profile = repo.views["customer_profile"].features
    special = entity_rows.special
    assert out[credit].isna().all(axis=1).sum() >= 1
    for case in ("gap", "ttl_edge_outside", "before_first_snapshot"):
        assert out.loc[special[case], credit].isna().all(), case
    for case in ("ttl_edge_inside", "at_snapshot"):
        assert out.loc[special[case], credit].notna().all(), case
    # The profile view's TTL (90 d) outlives the credit gap; before any snapshot there is nothing.
    assert out.loc[special["gap"], profile].notna().all()
    assert out.loc[special["before_first_snapshot"], profile].isna().all()
    assert out.loc[special["before_first_snapshot"], repo.views["zipcode_stats"].features].notna().all()


@pytest.mark.parametrize("view", BATCH_VIEWS)
def test_historical_features_match_point_in_time_reference_for_every_feature(
    repo: FeastRepo, historical: pd.DataFrame, reference: dict[str, pd.DataFrame], view: str
) -> None:
    expected = reference[view]
    features = repo.views[view].features
    # The reference must exercise both outcomes, or agreeing with it would prove little.
    assert expected[features].notna().all(axis=1).any()
    if view != "zipcode_stats":
        assert expected[features].isna().all(axis=1).any()
    mismatches = find_mismatches(expected, historical.set_index("row_key"), features)
    assert mismatches.empty, f"{len(mismatches)} mismatches, first:\n{mismatches.head(20).to_string()}"


def test_historical_features_prefer_latest_created_snapshot_when_event_times_tie(
    repo: FeastRepo, entity_rows: EntityRows, historical: pd.DataFrame
) -> None:
    out = historical.set_index("row_key")
    middle = repo.restated.iloc[::2].reset_index(drop=True)
    features = repo.views["credit_history"].features
    got = out.loc[entity_rows.restated, features].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, middle[features], check_dtype=False)


def test_reference_check_flags_future_peeking_join_and_its_label_leak(
    repo: FeastRepo, entity_rows: EntityRows, historical: pd.DataFrame, reference: dict[str, pd.DataFrame]
) -> None:
    credit = repo.views["credit_history"]
    wrong = future_peeking_join(entity_rows.frame, credit)
    mismatches = find_mismatches(reference["credit_history"], wrong, credit.features)
    assert len(mismatches) > 0
    assert "accounts_in_collections" in set(mismatches["feature"])

    # Only the wrong join sees the label: collections rise after a default, never fall.
    outcomes = entity_rows.outcomes
    column = "accounts_in_collections"
    correct = historical.set_index("row_key").loc[outcomes.index, column]
    leaky = wrong.loc[outcomes.index, column]
    defaulted = outcomes["defaulted"] == 1
    assert defaulted.sum() >= 10
    assert leaky[defaulted].mean() > correct[defaulted].mean()
    assert (leaky - correct)[defaulted].mean() > (leaky - correct)[~defaulted].mean()
    last_snapshot = credit.snapshots.groupby("customer_id")["event_timestamp"].max()
    customers = entity_rows.frame.set_index("row_key").loc[outcomes.index, "customer_id"]
    visible = defaulted & (outcomes["default_timestamp"] < customers.map(last_snapshot).to_numpy()) & correct.notna()
    assert visible.sum() >= 10
    assert ((leaky - correct)[visible] >= 1).all()


def test_on_demand_features_match_request_and_point_in_time_inputs(
    entity_rows: EntityRows, historical: pd.DataFrame, reference: dict[str, pd.DataFrame]
) -> None:
    frame = entity_rows.frame.set_index("row_key")
    expected = expected_loan_ratios(
        frame["loan_amount"],
        frame["loan_term_months"],
        reference["customer_profile"].loc[frame.index, "annual_income"],
        reference["credit_history"].loc[frame.index, "monthly_debt_payments"],
    )
    out = historical.set_index("row_key")
    mismatches = find_mismatches(expected, out, ["loan_to_income", "payment_to_income"])
    assert mismatches.empty, mismatches.head(20).to_string()
    no_income = entity_rows.special["before_first_snapshot"]
    assert np.isnan(out.loc[no_income, "loan_to_income"]) and np.isnan(out.loc[no_income, "payment_to_income"])
    assert expected["payment_to_income"].isna().sum() > expected["loan_to_income"].isna().sum()
