"""Calibration: fitting on a calibration slice, the JSON round trip, the one function that applies it."""

from __future__ import annotations

import json
import math

import lightgbm
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mlstack.training import calibration, evaluation, model_input
from mlstack.training.calibration import IDENTITY, Calibrator, choose_method, default_probabilities, fit_calibrator
from mlstack.training.dataset import split_by_time, train_booster
from mlstack.training.evaluation import calibration_fit, evaluate_predictions
from tests.support.training_data import FAST_PARAMS, synthetic_applications


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def shifted_world(rows: int, seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """A model's raw scores and labels drawn from the same scores moved by `shift` log-odds (a new base rate)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(-1.6, 1.0, rows)
    labels = (rng.random(rows) < sigmoid(scores + shift)).astype(np.int64)
    return scores, labels


def test_recalibration_on_a_shifted_base_rate_moves_the_intercept_to_zero_and_keeps_the_ranking():
    # The champion's scores still rank well, but the base rate rose by 0.9 log-odds (the recession).
    # 20,000 rows each: the intercept's sampling error is about 0.02, so "about 0" can be checked at 0.1.
    calibrate_scores, calibrate_labels = shifted_world(20_000, seed=1, shift=0.9)
    holdout_scores, holdout_labels = shifted_world(20_000, seed=2, shift=0.9)
    before = sigmoid(holdout_scores)
    platt = fit_calibrator(calibrate_scores, calibrate_labels, "platt")
    after = platt.apply(holdout_scores)

    old, new = evaluate_predictions(holdout_labels, before, 0.2), evaluate_predictions(holdout_labels, after, 0.2)
    assert old.calibration_intercept == pytest.approx(0.9, abs=0.1)
    assert abs(new.calibration_intercept) < 0.1
    assert new.calibration_slope == pytest.approx(1.0, abs=0.15)
    assert new.log_loss < old.log_loss - 0.01
    assert new.roc_auc == pytest.approx(old.roc_auc, abs=1e-12)  # a monotone map: the same ranking
    assert roc_auc_score(holdout_labels, after) == roc_auc_score(holdout_labels, before)


def test_platt_fit_matches_scikit_learn_calibration_of_the_same_scores():
    from sklearn.linear_model import LogisticRegression

    scores, labels = shifted_world(4000, seed=3, shift=0.5)
    platt = fit_calibrator(scores, labels, "platt")
    # Platt's fit is a logistic regression of the label on the score (with smoothed targets): close to plain MLE.
    plain = LogisticRegression(C=1e6).fit(scores.reshape(-1, 1), labels)
    assert -platt.a == pytest.approx(float(plain.coef_[0, 0]), abs=0.05)
    assert -platt.b == pytest.approx(float(plain.intercept_[0]), abs=0.05)
    assert platt.rows == 4000 and platt.defaults == int(labels.sum())


def test_isotonic_fit_is_monotone_and_improves_log_loss_on_a_shifted_base_rate():
    scores, labels = shifted_world(6000, seed=4, shift=0.9)
    isotonic = fit_calibrator(scores, labels, "isotonic")
    assert isotonic.method == "isotonic" and len(isotonic.knots_x) > 2
    grid = np.linspace(-6, 4, 200)
    assert np.all(np.diff(isotonic.apply(grid)) >= 0)
    holdout_scores, holdout_labels = shifted_world(6000, seed=5, shift=0.9)
    calibrated = np.clip(isotonic.apply(holdout_scores), 1e-6, 1 - 1e-6)
    old = evaluate_predictions(holdout_labels, sigmoid(holdout_scores), 0.2)
    assert evaluate_predictions(holdout_labels, calibrated, 0.2).log_loss < old.log_loss - 0.01


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibrator_json_round_trip_gives_the_same_calibrator_and_the_same_probabilities(method):
    scores, labels = shifted_world(6000, seed=6, shift=0.4)
    fitted = fit_calibrator(scores, labels, method)
    text = fitted.to_json()
    assert json.loads(text)["method"] == method  # plain JSON numbers, nothing pickled
    again = Calibrator.from_json(text)
    assert again == fitted
    assert np.array_equal(again.apply(scores), fitted.apply(scores))


def test_identity_round_trips_and_applies_the_booster_as_it_is():
    assert Calibrator.from_json(IDENTITY.to_json()) == IDENTITY
    split = split_by_time(synthetic_applications(1500, seed=1), 0.15, 0.15)
    booster = train_booster(split, FAST_PARAMS)
    matrix = model_input.encode(split.holdout)
    assert np.array_equal(default_probabilities(booster, IDENTITY, matrix), booster.predict(matrix))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"format": 2, "method": "platt", "a": 1, "b": 0}', "format must be 1"),
        ('{"format": 1, "method": "beta"}', "method must be one of"),
        ('{"format": 1, "method": "platt", "a": 1}', "finite a and b"),
        ('{"format": 1, "method": "isotonic", "knots_x": [0, 1], "knots_y": [0.5, 0.2]}', "non-decreasing"),
        ('{"format": 1, "method": "isotonic", "knots_x": [0, 1], "knots_y": [0.5]}', "as many knots_x"),
        ('{"format": 1, "method": "platt", "a": "x", "b": 0}', "invalid"),
    ],
)
def test_from_json_rejects_bad_documents_naming_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        Calibrator.from_json(text)


def test_fit_calibrator_needs_both_classes():
    with pytest.raises(ValueError, match="two defaults and two non-defaults"):
        fit_calibrator(np.linspace(-2, 2, 100), np.zeros(100), "platt")


def test_choose_method_uses_isotonic_only_with_enough_rows():
    assert choose_method("none", 100_000, 5000) == "identity"
    assert choose_method("platt", 100_000, 5000) == "platt"
    assert choose_method("auto", 4999, 5000) == "platt"
    assert choose_method("auto", 5000, 5000) == "isotonic"
    assert choose_method("isotonic", 6000, 5000) == "isotonic"
    with pytest.raises(ValueError, match="MLSTACK_CALIBRATION_ISOTONIC_MIN_ROWS=5000"):
        choose_method("isotonic", 800, 5000)


def test_batch_path_applies_booster_and_calibrator_through_the_one_function():
    split = split_by_time(synthetic_applications(3000, seed=2), 0.15, 0.15, 0.15)
    booster = train_booster(split, FAST_PARAMS)
    raw = booster.predict(model_input.encode(split.calibration), raw_score=True)
    platt = fit_calibrator(raw, split.calibration["defaulted"].to_numpy(), "platt")
    offline = evaluation.predict(booster, split.holdout, platt)
    by_hand = platt.apply(booster.predict(model_input.encode(split.holdout), raw_score=True))
    assert np.array_equal(offline, by_hand)
    assert not np.allclose(offline, booster.predict(model_input.encode(split.holdout)))  # it did calibrate
    fit = calibration_fit(split.holdout["defaulted"].to_numpy(), offline)
    assert math.isfinite(fit.intercept) and abs(fit.intercept) < 0.5
    assert isinstance(booster, lightgbm.Booster) and calibration.CALIBRATOR_FILE == "calibrator.json"


def test_split_by_time_puts_the_calibration_slice_between_validation_and_holdout():
    split = split_by_time(synthetic_applications(2000, seed=3), 0.15, 0.15, 0.15)
    assert split.train["event_timestamp"].max() < split.validation["event_timestamp"].min()
    assert split.validation["event_timestamp"].max() < split.calibration["event_timestamp"].min()
    assert split.calibration["event_timestamp"].max() < split.holdout["event_timestamp"].min()
    assert sum(split.rows().values()) == 2000
    assert split.rows()["calibration"] == pytest.approx(300, abs=5)
    assert split_by_time(synthetic_applications(2000, seed=3), 0.15, 0.15).calibration.empty
