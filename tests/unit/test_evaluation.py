"""Evaluation without Feast: metrics on known inputs, NaN handling, reliability curve, leakage rules, plots."""

from __future__ import annotations

import math
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pytest

from mlstack.training.dataset import split_by_time, train_booster
from mlstack.training.evaluation import (
    UNIVARIATE_AUC_CEILING,
    Metrics,
    calibration_error_noise,
    evaluate,
    evaluate_predictions,
    leakage_warnings,
    predict,
    reliability_curve,
    score_holdout,
    score_predictions,
    univariate_auc,
    write_plots,
)
from mlstack.training.model_input import FEATURES
from tests.support.training_data import FAST_PARAMS, synthetic_applications

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained() -> tuple[lightgbm.Booster, pd.DataFrame]:
    split = split_by_time(synthetic_applications(2000, seed=2), 0.15, 0.15)
    return train_booster(split, FAST_PARAMS), split.holdout


def metrics_with_auc(auc: float) -> Metrics:
    return Metrics(auc, 0.3, 0.3, 0.09, 0.01, 0.2, 0.3, 0.5, 0.2, 1000, 100, 0)


# --------------------------------------------------------------------------- metrics


def test_evaluate_predictions_perfect_ranking_gives_auc_one() -> None:
    y = np.array([0, 0, 0, 1, 1])
    metrics = evaluate_predictions(y, [0.1, 0.2, 0.3, 0.8, 0.9], threshold=0.5)
    assert metrics.roc_auc == 1.0 and metrics.pr_auc == 1.0
    assert (metrics.precision_at_threshold, metrics.recall_at_threshold) == (1.0, 1.0)
    assert metrics.decline_rate_at_threshold == pytest.approx(0.4)
    assert (metrics.rows, metrics.positives, metrics.nan_predictions) == (5, 2, 0)


def test_evaluate_predictions_constant_prediction_gives_auc_half() -> None:
    y = np.array([0, 1] * 50)
    metrics = evaluate_predictions(y, np.full(100, 0.5), threshold=0.2)
    assert metrics.roc_auc == 0.5
    assert metrics.brier == pytest.approx(0.25)
    assert metrics.log_loss == pytest.approx(math.log(2))
    assert metrics.calibration_error == pytest.approx(0.0)
    assert metrics.decline_rate_at_threshold == 1.0 and metrics.precision_at_threshold == 0.5


def test_evaluate_predictions_calibration_error_is_zero_for_calibrated_bins() -> None:
    labels, probs = [], []
    for p, n in ((0.05, 200), (0.25, 100), (0.55, 40), (0.95, 20)):
        positives = round(p * n)
        labels += [1] * positives + [0] * (n - positives)
        probs += [p] * n
    metrics = evaluate_predictions(labels, probs, threshold=0.5)
    assert metrics.calibration_error == pytest.approx(0.0, abs=1e-12)


def test_evaluate_predictions_calibration_error_weights_bins_by_rows() -> None:
    # 90 rows predicted 0.9 that never default (gap 0.9), 10 rows predicted 0.1 at a 10% rate (gap 0).
    labels = [0] * 90 + [1] + [0] * 9
    probs = [0.9] * 90 + [0.1] * 10
    assert evaluate_predictions(labels, probs, 0.5).calibration_error == pytest.approx(0.81)


def test_evaluate_predictions_threshold_counts_equal_probability_as_decline() -> None:
    metrics = evaluate_predictions([1, 0, 1, 0], [0.2, 0.2, 0.1, 0.05], threshold=0.2)
    assert metrics.precision_at_threshold == 0.5
    assert metrics.recall_at_threshold == 0.5
    assert metrics.decline_rate_at_threshold == 0.5


def test_evaluate_predictions_counts_nan_predictions_and_scores_the_rest() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    with_nan = p.copy()
    with_nan[[3, 50, 77]] = [np.nan, np.inf, np.nan]
    keep = np.isfinite(with_nan)
    got = evaluate_predictions(y, with_nan, 0.4)
    want = evaluate_predictions(y[keep], p[keep], 0.4)
    assert got.nan_predictions == 3 and got.rows == 200 and got.positives == int(y.sum())
    for name in ("roc_auc", "pr_auc", "log_loss", "brier", "calibration_error", "precision_at_threshold"):
        assert getattr(got, name) == pytest.approx(getattr(want, name)), name


def test_evaluate_predictions_all_nan_or_one_class_gives_nan_metrics_without_error() -> None:
    all_nan = evaluate_predictions([0, 1, 1], [np.nan] * 3, 0.5)
    assert all_nan.nan_predictions == 3
    assert all(math.isnan(value) for value in (all_nan.roc_auc, all_nan.log_loss, all_nan.calibration_error))
    one_class = evaluate_predictions([0, 0, 0], [0.1, 0.2, 0.6], 0.5)
    assert math.isnan(one_class.roc_auc) and math.isnan(one_class.pr_auc) and math.isnan(one_class.recall_at_threshold)
    assert math.isfinite(one_class.log_loss) and one_class.precision_at_threshold == 0.0
    assert set(one_class.as_dict()) == set(Metrics.__dataclass_fields__)


@pytest.mark.parametrize(
    ("y_true", "y_prob", "threshold", "message"),
    [
        ([0, 1], [0.5], 0.5, "differ in length"),
        ([0, 2], [0.1, 0.2], 0.5, "0/1 labels"),
        ([0, np.nan], [0.1, 0.2], 0.5, "0/1 labels"),
        ([0, 1], [0.1, 1.2], 0.5, r"probabilities in \[0, 1\]"),
        ([0, 1], [0.1, 0.2], 1.0, "threshold"),
    ],
)
def test_evaluate_predictions_rejects_bad_input(y_true: list, y_prob: list, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(y_true, y_prob, threshold)


def test_reliability_curve_has_one_row_per_bin_and_puts_one_in_the_last() -> None:
    curve = reliability_curve([0, 1, 1, 0, 1], [0.0, 0.15, 1.0, 0.95, np.nan], bins=10)
    assert list(curve.columns) == ["bin_lower", "bin_upper", "count", "mean_predicted", "observed_rate"]
    assert len(curve) == 10 and curve["count"].sum() == 4
    assert curve["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert curve.loc[9, "mean_predicted"] == pytest.approx(0.975) and curve.loc[9, "observed_rate"] == 0.5
    assert math.isnan(curve.loc[5, "mean_predicted"])


# --------------------------------------------------------------------------- booster


def test_evaluate_scores_a_booster_on_its_holdout(trained: tuple[lightgbm.Booster, pd.DataFrame]) -> None:
    booster, holdout = trained
    probs = predict(booster, holdout)
    assert probs.shape == (len(holdout),) and ((probs > 0) & (probs < 1)).all()
    metrics = evaluate(booster, holdout, threshold=0.2)
    assert metrics.roc_auc > 0.7 and metrics.rows == len(holdout) and metrics.nan_predictions == 0
    assert metrics == evaluate_predictions(holdout["defaulted"], probs, 0.2)


def test_predict_rejects_a_booster_trained_on_other_features() -> None:
    data = lightgbm.Dataset(np.random.default_rng(0).normal(size=(100, 2)), label=[0, 1] * 50)
    other = lightgbm.train({"objective": "binary", "verbose": -1}, data, num_boost_round=2)
    with pytest.raises(ValueError, match="trained on features"):
        predict(other, synthetic_applications(10))


def test_write_plots_writes_four_pngs(trained: tuple[lightgbm.Booster, pd.DataFrame], tmp_path: Path) -> None:
    booster, holdout = trained
    paths = write_plots(booster, holdout, tmp_path / "plots")
    assert [path.name for path in paths] == ["roc.png", "pr.png", "calibration.png", "feature_importance.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_write_plots_draws_the_champion_beside_on_the_same_rows(
    trained: tuple[lightgbm.Booster, pd.DataFrame], tmp_path: Path
) -> None:
    booster, holdout = trained
    champion = score_predictions(holdout["defaulted"], np.clip(predict(booster, holdout) * 1.5, 0, 1), 0.2)
    alone = write_plots(booster, holdout, tmp_path / "alone")[2]
    both = write_plots(booster, holdout, tmp_path / "both", champion=champion, champion_label="champion v1")[2]
    assert both.name == "calibration.png" and both.read_bytes()[:8] == PNG_MAGIC
    assert both.read_bytes() != alone.read_bytes()
    other_rows = score_predictions(holdout["defaulted"].iloc[::-1], predict(booster, holdout), 0.2)
    with pytest.raises(ValueError, match="same holdout rows"):
        write_plots(booster, holdout, tmp_path / "other", champion=other_rows)


def test_score_holdout_keeps_the_per_row_predictions_behind_its_metrics(
    trained: tuple[lightgbm.Booster, pd.DataFrame],
) -> None:
    booster, holdout = trained
    score = score_holdout(booster, holdout, 0.2)
    assert score.labels.tolist() == holdout["defaulted"].tolist()
    assert np.array_equal(score.probabilities, predict(booster, holdout))
    assert score.metrics == evaluate(booster, holdout, 0.2)


# --------------------------------------------------------------------------- leakage


def test_leakage_warnings_fire_above_the_ceiling_and_not_below() -> None:
    assert leakage_warnings(metrics_with_auc(0.84), ceiling=0.85) == []
    assert leakage_warnings(metrics_with_auc(0.85), ceiling=0.85) == []
    assert leakage_warnings(metrics_with_auc(float("nan")), ceiling=0.85) == []
    (warning,) = leakage_warnings(metrics_with_auc(0.86), ceiling=0.85)
    assert "0.860" in warning and "0.850" in warning


def test_leakage_warnings_name_a_feature_above_the_univariate_ceiling() -> None:
    below = {"bureau_score": UNIVARIATE_AUC_CEILING - 0.01, "age": 0.52}
    assert leakage_warnings(metrics_with_auc(0.75), 0.85, below) == []
    above = below | {"accounts_in_collections": 0.91, "delinquencies_2y": UNIVARIATE_AUC_CEILING + 0.01}
    warnings = leakage_warnings(metrics_with_auc(0.75), 0.85, above)
    assert len(warnings) == 2
    assert "'accounts_in_collections'" in warnings[0] and "'delinquencies_2y'" in warnings[1]
    assert leakage_warnings(metrics_with_auc(0.75), 0.85, above, univariate_ceiling=0.95) == []


def test_univariate_auc_orients_and_skips_categoricals_and_missing_values() -> None:
    frame = synthetic_applications(400, seed=3)
    frame["bureau_score"] = frame["defaulted"] * 10.0  # perfectly separates, positively
    frame["open_accounts"] = -frame["defaulted"] + 0.0  # perfectly separates, negatively
    frame["age"] = 40  # constant: no ranking at all
    frame.loc[::2, "delinquencies_2y"] = np.nan
    aucs = univariate_auc(frame)
    assert aucs["bureau_score"] == 1.0 and aucs["open_accounts"] == 1.0
    assert "age" not in aucs and "home_ownership" not in aucs and "loan_purpose" not in aucs
    assert 0.5 <= aucs["delinquencies_2y"] < 0.7
    assert list(aucs) == [name for name in FEATURES if name in aucs]


def test_calibration_noise_is_what_a_perfect_model_shows_and_shrinks_with_rows():
    rng = np.random.default_rng(4)
    small, large = rng.beta(2, 12, 250), rng.beta(2, 12, 25_000)
    noise_small, noise_large = calibration_error_noise(small), calibration_error_noise(large)
    assert calibration_error_noise(small) == noise_small  # seeded: the same answer every time
    assert 0.03 < noise_small < 0.12
    assert noise_large < noise_small / 5
    # A perfectly calibrated model exceeds the noise level in about 5% of holdouts, not more.
    exceed = [
        evaluate_predictions((rng.random(250) < small).astype(int), small, 0.2).calibration_error > noise_small
        for _ in range(400)
    ]
    assert 0.01 < np.mean(exceed) < 0.10
