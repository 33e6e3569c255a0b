"""The gate's statistics: paired bootstrap, DeLong's test of two correlated AUCs, and the calibration fit.

DeLong is checked against values computed independently: a worked example done by hand with exact
fractions, and the O(defaults x non-defaults) definition of DeLong, DeLong & Clarke-Pearson (1988)
on random data; the fast midrank algorithm must give the same covariance.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mlstack.training.comparison import (
    Interval,
    compare,
    delong_covariance,
    delong_test,
    midranks,
    paired_bootstrap,
    row_brier,
    row_log_loss,
)
from mlstack.training.evaluation import calibration_fit, evaluate_predictions


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def simulated(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from known log-odds, and two models seeing them through independent noise."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.5, 1.0, rows)
    labels = (rng.random(rows) < sigmoid(logit)).astype(float)
    first = sigmoid(logit + rng.normal(0, 0.5, rows))
    second = sigmoid(logit + rng.normal(0, 0.8, rows))
    return labels, first, second


def delong_by_definition(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance straight from the definition: every default against every non-default."""
    x, y = scores[:, labels == 1], scores[:, labels == 0]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # models x defaults x non-defaults
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / x.shape[1] + np.cov(v01) / y.shape[1]


# --------------------------------------------------------------------------- DeLong


def test_delong_matches_a_worked_example_by_hand():
    # Defaults scored (0.9, 0.8, 0.4) by A and (0.9, 0.5, 0.6) by B; non-defaults (0.7, 0.3, 0.2) and
    # (0.6, 0.4, 0.1), a tie included. Structural components: V10_A = (1, 1, 2/3), V01_A = (2/3, 1, 1),
    # V10_B = (1, 2/3, 5/6), V01_B = (1/2, 1, 1). So AUC_A = 8/9, AUC_B = 5/6, and with sample
    # covariances over m = n = 3: var A = (1/27 + 1/27)/3 = 2/81, var B = (1/36 + 1/12)/3 = 1/27,
    # cov = (0 + 1/18)/3 = 1/54, var(A - B) = 2/81; z = (1/18) / (sqrt(2)/9) = 1/(2 sqrt(2)).
    labels = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    b = np.array([0.9, 0.5, 0.6, 0.6, 0.4, 0.1])
    aucs, covariance = delong_covariance(labels, np.vstack([a, b]))
    assert aucs == pytest.approx([8 / 9, 5 / 6])
    assert covariance == pytest.approx(np.array([[2 / 81, 1 / 54], [1 / 54, 1 / 27]]))
    test = delong_test(labels, a, b, confidence=0.95)
    assert test.difference.estimate == pytest.approx(1 / 18)
    assert test.standard_error == pytest.approx(math.sqrt(2) / 9)
    assert test.p_value == pytest.approx(2 * (1 - NormalDist().cdf(1 / (2 * math.sqrt(2)))))
    assert test.p_value == pytest.approx(0.7237, abs=1e-4)
    half_width = NormalDist().inv_cdf(0.975) * math.sqrt(2) / 9
    assert (test.difference.lower, test.difference.upper) == pytest.approx((1 / 18 - half_width, 1 / 18 + half_width))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_equals_the_definition_on_random_data_with_ties(seed):
    labels, first, second = simulated(300, seed)
    scores = np.vstack([np.round(first, 2), np.round(second, 2)])  # rounding makes many ties
    fast_aucs, fast_covariance = delong_covariance(labels, scores)
    slow_aucs, slow_covariance = delong_by_definition(labels, scores)
    assert fast_aucs == pytest.approx(slow_aucs, abs=1e-12)
    assert fast_covariance == pytest.approx(slow_covariance, abs=1e-14)
    assert fast_aucs[0] == pytest.approx(roc_auc_score(labels, scores[0]), abs=1e-12)


def test_delong_standard_error_is_the_spread_of_the_difference_across_holdouts():
    # Many holdouts from the same world: DeLong's standard error, estimated on each, is on average
    # the standard deviation of the AUC difference across them.
    differences, errors = [], []
    for seed in range(300):
        labels, first, second = simulated(400, 1000 + seed)
        test = delong_test(labels, first, second, confidence=0.95)
        differences.append(test.difference.estimate)
        errors.append(test.standard_error)
    assert np.mean(errors) == pytest.approx(np.std(differences, ddof=1), rel=0.15)


def test_delong_of_identical_scores_has_no_variance():
    labels, first, _ = simulated(200, 4)
    test = delong_test(labels, first, first, confidence=0.95)
    assert test.difference == Interval(0.0, 0.0, 0.0) and test.standard_error == 0 and test.p_value == 1.0


def test_delong_needs_two_of_each_class():
    with pytest.raises(ValueError, match="at least two defaults"):
        delong_covariance(np.array([1, 0, 0, 0]), np.array([[0.9, 0.1, 0.2, 0.3]]))


def test_midranks_average_ties():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


# --------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_is_reproducible_under_its_seed():
    labels, first, second = simulated(2000, 5)
    differences = np.vstack([row_log_loss(labels, first) - row_log_loss(labels, second)])
    once = paired_bootstrap(differences, rounds=500, seed=11, confidence=0.95)
    assert paired_bootstrap(differences, rounds=500, seed=11, confidence=0.95) == once
    other = paired_bootstrap(differences, rounds=500, seed=12, confidence=0.95)
    assert other != once and other[0].estimate == once[0].estimate  # only the resampling changed


def test_paired_bootstrap_interval_matches_the_normal_approximation_on_many_rows():
    rng = np.random.default_rng(6)
    differences = rng.normal(0.01, 0.2, 20_000)
    (interval,) = paired_bootstrap(differences[None, :], rounds=2000, seed=0, confidence=0.95)
    half_width = 1.96 * differences.std(ddof=1) / math.sqrt(len(differences))
    assert interval.estimate == pytest.approx(differences.mean())
    assert interval.upper - interval.lower == pytest.approx(2 * half_width, rel=0.1)
    assert interval.lower < interval.estimate < interval.upper


def test_paired_bootstrap_resamples_every_measure_with_the_same_rows():
    differences = np.arange(100, dtype=float)
    first, second = paired_bootstrap(np.vstack([differences, 2 * differences]), rounds=300, seed=1, confidence=0.9)
    assert (second.lower, second.estimate, second.upper) == pytest.approx(
        (2 * first.lower, 2 * first.estimate, 2 * first.upper)
    )


def test_paired_bootstrap_of_a_constant_difference_is_that_constant():
    (interval,) = paired_bootstrap(np.full((1, 50), 0.25), rounds=100, seed=0, confidence=0.95)
    assert interval == Interval(0.25, 0.25, 0.25)


def test_paired_bootstrap_does_not_depend_on_the_memory_bound(monkeypatch):
    import mlstack.training.comparison as comparison

    differences = np.random.default_rng(2).normal(size=(2, 500))
    whole = paired_bootstrap(differences, rounds=200, seed=3, confidence=0.95)
    monkeypatch.setattr(comparison, "BOOTSTRAP_CHUNK_INDICES", 500 * 7)  # 7 rounds at a time
    assert paired_bootstrap(differences, rounds=200, seed=3, confidence=0.95) == whole


def test_compare_is_challenger_minus_champion_on_rows_both_scored():
    labels, first, second = simulated(1000, 7)
    comparison = compare(labels, first, second, confidence=0.95, rounds=300, seed=0)
    assert comparison.log_loss.estimate == pytest.approx(
        row_log_loss(labels, first).mean() - row_log_loss(labels, second).mean()
    )
    assert comparison.brier.estimate == pytest.approx(
        row_brier(labels, first).mean() - row_brier(labels, second).mean()
    )
    assert comparison.roc_auc.estimate == pytest.approx(roc_auc_score(labels, first) - roc_auc_score(labels, second))
    assert comparison.log_loss.estimate < 0  # less noise, better score
    with_nan = second.copy()
    with_nan[:10] = np.nan
    partial = compare(labels, first, with_nan, confidence=0.95, rounds=300, seed=0)
    assert partial.rows == 990 and partial.defaults == int(labels[10:].sum())
    with pytest.raises(ValueError, match="same rows"):
        compare(labels, first, second[:-1], confidence=0.95, rounds=300, seed=0)


def test_row_log_loss_averages_to_the_evaluated_log_loss():
    labels, first, _ = simulated(500, 8)
    assert row_log_loss(labels, first).mean() == pytest.approx(evaluate_predictions(labels, first, 0.2).log_loss)
    assert row_brier(labels, first).mean() == pytest.approx(evaluate_predictions(labels, first, 0.2).brier)


# --------------------------------------------------------------------------- calibration fit


def calibration_world(rows: int = 20_000, seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.5, 1.0, rows)
    return logit, (rng.random(rows) < sigmoid(logit)).astype(int)


def test_calibrated_model_has_intercept_zero_and_slope_one():
    logit, labels = calibration_world()
    fit = calibration_fit(labels, sigmoid(logit))
    assert fit.intercept == pytest.approx(0.0, abs=0.05)
    assert fit.slope == pytest.approx(1.0, abs=0.05)


def test_over_confident_model_has_slope_below_one_and_under_confident_above():
    logit, labels = calibration_world()
    over = calibration_fit(labels, sigmoid(-1.5 + 2.0 * (logit + 1.5)))  # spread twice too wide
    under = calibration_fit(labels, sigmoid(-1.5 + 0.5 * (logit + 1.5)))  # spread half too narrow
    assert over.slope == pytest.approx(0.5, abs=0.05)
    assert under.slope == pytest.approx(2.0, abs=0.1)


def test_intercept_is_positive_when_the_model_predicts_too_few_defaults_and_negative_when_too_many():
    logit, labels = calibration_world()
    too_few = calibration_fit(labels, sigmoid(logit - 0.7))  # the recession: the base rate moved up
    too_many = calibration_fit(labels, sigmoid(logit + 0.7))
    assert too_few.intercept == pytest.approx(0.7, abs=0.05) and too_few.slope == pytest.approx(1.0, abs=0.05)
    assert too_many.intercept == pytest.approx(-0.7, abs=0.05)


def test_calibration_fit_of_a_constant_prediction_has_an_intercept_but_no_slope():
    fit = calibration_fit([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3])
    assert fit.intercept == pytest.approx(math.log(1.0) - math.log(0.3 / 0.7))
    assert math.isnan(fit.slope)


def test_calibration_fit_is_nan_for_one_class_or_separated_data():
    one_class = calibration_fit([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(one_class.intercept) and math.isnan(one_class.slope)
    assert math.isnan(calibration_fit([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]).slope)  # no finite maximum


def test_evaluate_predictions_reports_the_calibration_fit():
    logit, labels = calibration_world(5000, 10)
    metrics = evaluate_predictions(labels, sigmoid(logit - 0.7), 0.2)
    fit = calibration_fit(labels, sigmoid(logit - 0.7))
    assert (metrics.calibration_intercept, metrics.calibration_slope) == (fit.intercept, fit.slope)
