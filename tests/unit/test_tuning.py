"""Time-aware tuning: purged time-ordered folds never train on an outcome observed after validation starts."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import TimeSeriesSplit

from mlstack.data.generator import DAYS_PER_MONTH, DEFAULT_DELAY_MONTHS
from mlstack.settings import Settings
from mlstack.training import tuning
from mlstack.training.dataset import split_by_time, training_params
from tests.support.training_data import synthetic_applications

HORIZON = timedelta(days=DEFAULT_DELAY_MONTHS[1] * DAYS_PER_MONTH + 1)  # the generator's longest default delay


def _applications_with_outcome_times(rows: int, days: int, seed: int = 0) -> pd.DataFrame:
    """Applications spread over `days`, each outcome observed when the generator would: 2-12 months later."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2023-01-01", tz="UTC")
    times = start + pd.to_timedelta(np.sort(rng.uniform(0, days, rows)), unit="D")
    delay = pd.to_timedelta(rng.uniform(*DEFAULT_DELAY_MONTHS, rows) * DAYS_PER_MONTH, unit="D")
    defaulted = rng.random(rows) < 0.14
    return pd.DataFrame(
        {
            "event_timestamp": times,
            "defaulted": defaulted.astype(np.int64),
            # When the outcome is known: the default itself, or the end of the horizon without one.
            "outcome_known": np.where(defaulted, times + delay, times + HORIZON),
        }
    )


def _trained_on_later_outcomes(frame: pd.DataFrame, train: np.ndarray, validation: np.ndarray) -> int:
    """Training rows whose outcome was observed after the validation block starts."""
    validation_start = frame["event_timestamp"].iloc[validation].min()
    return int((frame["outcome_known"].iloc[train] > validation_start).sum())


def test_time_folds_train_only_on_outcomes_observed_before_validation_starts():
    frame = _applications_with_outcome_times(rows=6000, days=3 * 365)

    folds = tuning.time_folds(frame["event_timestamp"], n_folds=3, gap=HORIZON)

    assert len(folds) >= 2
    for fold in folds:
        assert _trained_on_later_outcomes(frame, fold.train, fold.validation) == 0
        assert fold.last_train_time + HORIZON <= fold.validation_start
        assert fold.train.max() < fold.validation.min()  # time order: train strictly before validation
    # Negative control: the same splits without the gap train on outcomes observed during validation.
    plain = list(TimeSeriesSplit(n_splits=3).split(np.zeros(len(frame))))
    assert all(_trained_on_later_outcomes(frame, train, validation) > 0 for train, validation in plain)


def test_time_folds_refuse_history_shorter_than_the_gap():
    frame = _applications_with_outcome_times(rows=3000, days=300)

    with pytest.raises(tuning.InsufficientHistoryError, match="MLSTACK_LABEL_MATURITY_DAYS"):
        tuning.time_folds(frame["event_timestamp"], n_folds=3, gap=HORIZON)


def test_time_folds_need_rows_in_time_order():
    frame = _applications_with_outcome_times(rows=1000, days=900)

    with pytest.raises(ValueError, match="time order"):
        tuning.time_folds(frame["event_timestamp"].iloc[::-1], n_folds=3, gap=timedelta(days=30))


def test_tune_runs_the_bounded_number_of_trials_and_keeps_the_best(tmp_path):
    parts = split_by_time(synthetic_applications(rows=3000, seed=4), 0.15, 0.15)
    settings = Settings(
        state_dir=tmp_path, label_maturity_days=30, tuning_trials=4, tuning_folds=3, num_boost_round=200
    )

    result = tuning.tune(settings, parts)

    assert [trial.number for trial in result.trials] == [0, 1, 2, 3]
    assert result.best.cv_log_loss == min(trial.cv_log_loss for trial in result.trials)
    assert len({tuple(sorted(trial.params.items())) for trial in result.trials}) == 4
    for trial in result.trials:
        assert 0.01 <= trial.params["learning_rate"] <= 0.2
        assert 7 <= trial.params["num_leaves"] <= 127
        assert 0 < trial.cv_log_loss < 1 and 1 <= trial.rounds <= 200
    for last_train, validation_start in result.folds:
        assert pd.Timestamp(last_train) + timedelta(days=30) <= pd.Timestamp(validation_start)


def test_choose_params_falls_back_to_settings_when_history_is_shorter_than_the_gap(tmp_path):
    parts = split_by_time(synthetic_applications(rows=2000, seed=1), 0.15, 0.15)  # one year of applications
    settings = Settings(state_dir=tmp_path, label_maturity_days=366, tuning_trials=2)

    choice = tuning.choose_params(settings, parts, tune_now=True)

    assert choice.source == "settings" and choice.study is None
    assert choice.params == training_params(settings)
    assert "tuning skipped: no tuning fold has 200 training rows 366 days" in choice.detail
