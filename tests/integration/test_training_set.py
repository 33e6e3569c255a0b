"""Training sets through the real Feast repo (DuckDB offline store): rows, fingerprint, training, leakage check.

The data ends on a fixed date and covers 18 months (the default), unlike the 12 months ending today of
`feast_fixtures.applied_repo`: defaults surface 2-12 months after an application, so only a longer
history lets a future-peeking join see enough of them for the leakage rule to be checked with margin.
Nothing is materialised here, so the end need not be near today.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from mlstack.data.generator import generate_data
from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.features.online_store import RedisTarget
from mlstack.features.store import apply_features, get_store
from mlstack.settings import Settings
from mlstack.training import evaluation
from mlstack.training.dataset import (
    Split,
    TrainingSet,
    build_training_set,
    split_by_time,
    train_booster,
    training_params,
)
from mlstack.training.evaluation import evaluate, leakage_warnings, univariate_auc, write_plots
from mlstack.training.model_input import FEATURES
from tests.support.factories import DBS, make_settings
from tests.support.feast_repo import (
    ViewSpec,
    expected_loan_ratios,
    future_peeking_join,
    held_db_and_environment,
    view_specs,
)

pytestmark = pytest.mark.filterwarnings("ignore:On demand feature view is an experimental feature:RuntimeWarning")

CUSTOMERS = 1500
MONTHS = 18
SEED = 7
DATA_END = datetime(2025, 6, 1, tzinfo=UTC)

EXPECTED_REFS = [
    "customer_profile:age",
    "customer_profile:annual_income",
    "customer_profile:employment_length_years",
    "customer_profile:home_ownership",
    "credit_history:credit_utilisation",
    "credit_history:open_accounts",
    "credit_history:delinquencies_2y",
    "credit_history:bureau_score",
    "credit_history:monthly_debt_payments",
    "credit_history:accounts_in_collections",
    "zipcode_stats:median_income",
    "zipcode_stats:unemployment_rate",
    "zipcode_stats:population",
    "zipcode_stats:regional_default_rate",
    "loan_ratios:loan_to_income",
    "loan_ratios:payment_to_income",
]


@dataclass(frozen=True)
class TrainingRepo:
    """The applied repo of this module and the raw data behind it."""

    settings: Settings
    store: FeatureStore
    views: dict[str, ViewSpec]
    applications: pd.DataFrame


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisTarget) -> Iterator[TrainingRepo]:
    """Generated data and the real repo applied against it, on a Redis logical DB held for the module."""
    target = redis_server.with_db(next(DBS))
    settings = make_settings(tmp_path_factory.mktemp("training-state"), target, data_end=DATA_END.date(), seed=SEED)
    with held_db_and_environment(settings, target):
        generate_data(settings.data_dir, customers=CUSTOMERS, months=MONTHS, end=DATA_END, seed=SEED)
        store = get_store(settings, target)
        apply_features(store, settings.feature_repo)
        applications = pd.read_parquet(settings.data_dir / LOAN_APPLICATIONS_FILE)
        yield TrainingRepo(settings, store, view_specs(store, settings.data_dir), applications)


@pytest.fixture(scope="module")
def training_set(repo: TrainingRepo) -> TrainingSet:
    return build_training_set(repo.settings, repo.store)


@pytest.fixture(scope="module")
def split(repo: TrainingRepo, training_set: TrainingSet) -> Split:
    return split_by_time(training_set.frame, repo.settings.validation_fraction, repo.settings.holdout_fraction)


@pytest.fixture(scope="module")
def booster(repo: TrainingRepo, split: Split) -> lightgbm.Booster:
    return train_booster(split, training_params(repo.settings))


@contextlib.contextmanager
def changed_application(path: Path, application_id: int) -> Iterator[None]:
    """Rewrite the applications file with one loan amount changed; restore the original bytes afterwards."""
    original = path.read_bytes()
    frame = pd.read_parquet(path)
    frame.loc[frame["application_id"] == application_id, "loan_amount"] += 100.0
    try:
        frame.to_parquet(path, index=False)
        yield
    finally:
        path.write_bytes(original)


@contextlib.contextmanager
def changed_incomes(path: Path, incomes: dict[int, float]) -> Iterator[None]:
    """Rewrite the profile snapshots with every snapshot of each customer given that income; restore afterwards."""
    original = path.read_bytes()
    frame = pd.read_parquet(path)
    for customer_id, income in incomes.items():
        frame.loc[frame["customer_id"] == customer_id, "annual_income"] = income
    try:
        frame.to_parquet(path, index=False)
        yield
    finally:
        path.write_bytes(original)


def future_peeking_frame(repo: TrainingRepo, frame: pd.DataFrame) -> pd.DataFrame:
    """The training frame with each customer's *last* profile and credit snapshot: the classic leaky join."""
    leaky = frame.copy()
    for name in ("customer_profile", "credit_history"):
        view = repo.views[name]
        wrong = future_peeking_join(frame, view, row_key="application_id")
        leaky[view.features] = wrong.loc[frame["application_id"], view.features].to_numpy()
    ratios = expected_loan_ratios(
        leaky["loan_amount"], leaky["loan_term_months"], leaky["annual_income"], leaky["monthly_debt_payments"]
    )
    leaky[ratios.columns] = ratios
    return leaky


# --------------------------------------------------------------------------- training set


def test_build_training_set_returns_one_row_per_application(repo: TrainingRepo, training_set: TrainingSet) -> None:
    frame = training_set.frame
    applications = repo.applications[repo.applications["event_timestamp"] < DATA_END]
    assert len(frame) == len(applications) > 1000
    assert frame["application_id"].is_unique
    assert set(frame["application_id"]) == set(applications["application_id"])
    assert set(FEATURES) <= set(frame.columns) and "default_timestamp" not in frame.columns
    labels = applications.set_index("application_id").loc[frame["application_id"], "defaulted"].to_numpy()
    np.testing.assert_array_equal(frame["defaulted"].to_numpy(), labels)
    assert frame["bureau_score"].notna().mean() > 0.9
    assert training_set.feature_service == "credit_risk_v1"
    assert training_set.feature_refs == EXPECTED_REFS
    assert training_set.window_end == DATA_END
    assert training_set.window_start == frame["event_timestamp"].min()
    assert training_set.fingerprint.startswith(f"{len(frame)}:")


def test_build_training_set_fingerprint_is_stable_across_builds(repo: TrainingRepo, training_set: TrainingSet) -> None:
    again = build_training_set(repo.settings, repo.store)
    assert again.fingerprint == training_set.fingerprint
    pd.testing.assert_frame_equal(again.frame, training_set.frame)


def test_build_training_set_fingerprint_changes_when_an_application_changes(
    repo: TrainingRepo, training_set: TrainingSet
) -> None:
    application_id = int(training_set.frame["application_id"].iloc[len(training_set.frame) // 2])
    with changed_application(repo.settings.data_dir / LOAN_APPLICATIONS_FILE, application_id):
        changed = build_training_set(repo.settings, repo.store)
    assert len(changed.frame) == len(training_set.frame)
    assert changed.fingerprint != training_set.fingerprint
    assert changed.fingerprint.split(":")[0] == training_set.fingerprint.split(":")[0]


def test_build_training_set_keeps_only_the_window(repo: TrainingRepo, training_set: TrainingSet) -> None:
    start, end = DATA_END - timedelta(days=200), DATA_END - timedelta(days=100)
    windowed = build_training_set(repo.settings, repo.store, start=start, end=end)
    times = windowed.frame["event_timestamp"]
    assert times.min() >= start and times.max() < end
    all_times = training_set.frame["event_timestamp"]
    assert len(windowed.frame) == int(((all_times >= start) & (all_times < end)).sum()) > 100
    assert (windowed.window_start, windowed.window_end) == (start, end)


def test_build_training_set_ratios_equal_the_pandas_formula_on_the_joined_inputs_with_bad_incomes(
    repo: TrainingRepo, training_set: TrainingSet
) -> None:
    # The view runs in Feast's python mode; its values must be those of the vectorised pandas formula
    # (the view's former pandas mode) on the same joined inputs, bit for bit, bad incomes included.
    counts = training_set.frame["customer_id"].value_counts()
    zero, missing, negative = (int(customer_id) for customer_id in counts.index[:3])
    with changed_incomes(
        repo.settings.data_dir / "customer_profile.parquet", {zero: 0.0, missing: np.nan, negative: -1.0}
    ):
        frame = build_training_set(repo.settings, repo.store).frame
    income = frame["annual_income"]
    assert (income == 0).sum() > 0 and (income < 0).sum() > 0
    assert income[frame["customer_id"] == missing].isna().all() and income.notna().mean() > 0.9
    assert frame["monthly_debt_payments"].isna().any() and frame["monthly_debt_payments"].notna().any()

    want = expected_loan_ratios(
        frame["loan_amount"], frame["loan_term_months"], frame["annual_income"], frame["monthly_debt_payments"]
    )
    for feature in want.columns:
        assert frame[feature].dtype == np.float64, feature
        np.testing.assert_array_equal(frame[feature].to_numpy(), want[feature].to_numpy(), err_msg=feature)
        assert not np.isinf(frame[feature]).any(), feature
    bad = frame["customer_id"].isin([zero, missing, negative])
    assert frame.loc[bad, want.columns].isna().all().all()
    assert frame.loc[~bad & (income > 0), "loan_to_income"].notna().all()


# --------------------------------------------------------------------------- training and evaluation


def test_train_and_evaluate_end_to_end_give_a_sane_auc(
    repo: TrainingRepo, split: Split, booster: lightgbm.Booster, tmp_path: Path
) -> None:
    assert 0 < booster.best_iteration < repo.settings.num_boost_round
    metrics = evaluate(booster, split.holdout, repo.settings.decision_threshold)
    assert 0.65 < metrics.roc_auc < repo.settings.leakage_auc_ceiling
    assert metrics.nan_predictions == 0 and metrics.rows == len(split.holdout)
    assert all(np.isfinite(value) for value in metrics.as_dict().values())
    assert metrics.calibration_error < 0.1
    plots = write_plots(booster, split.holdout, tmp_path)
    assert [path.name for path in plots] == ["roc.png", "pr.png", "calibration.png", "feature_importance.png"]


def test_leakage_warnings_flag_a_future_peeking_training_set_but_not_the_point_in_time_one(
    repo: TrainingRepo, training_set: TrainingSet, split: Split, booster: lightgbm.Booster
) -> None:
    settings = repo.settings
    ceiling = settings.leakage_auc_ceiling

    correct_metrics = evaluate(booster, split.holdout, settings.decision_threshold)
    correct_univariate = univariate_auc(split.train)
    assert leakage_warnings(correct_metrics, ceiling, correct_univariate) == []
    assert max(correct_univariate.values()) < evaluation.UNIVARIATE_AUC_CEILING - 0.02

    leaky = future_peeking_frame(repo, training_set.frame)
    leaky_split = split_by_time(leaky, settings.validation_fraction, settings.holdout_fraction)
    leaky_metrics = evaluate(
        train_booster(leaky_split, training_params(settings)), leaky_split.holdout, settings.decision_threshold
    )
    leaky_univariate = univariate_auc(leaky_split.train)
    warnings = leakage_warnings(leaky_metrics, ceiling, leaky_univariate)
    assert warnings, f"not flagged: holdout AUC {leaky_metrics.roc_auc:.3f}, univariate {leaky_univariate}"
    credit_features = repo.views["credit_history"].features
    assert any(f"'{name}'" in warning for warning in warnings for name in credit_features)
    assert max(leaky_univariate.values()) > evaluation.UNIVARIATE_AUC_CEILING + 0.02
