"""Champion / challenger gate (known answers on simulated holdouts) and rollback planning (pure rules).

Holdouts are simulated from known default probabilities, so which model is better is known: the
true probabilities against a champion whose predictions are shifted, a copy with independent noise
of the same size, and so on.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from mlstack.settings import Settings
from mlstack.training.comparison import Interval
from mlstack.training.evaluation import HoldoutScore, score_predictions
from mlstack.training.promotion import (
    VERDICTS,
    Decision,
    Floors,
    GateRule,
    decide,
    floors_from,
    history_after_promotion,
    history_after_rollback,
    plan_rollback,
    rule_from,
)

FLOORS = Floors(min_auc=0.60, max_calibration_error=0.10)
RULE = GateRule(confidence=0.95, auc_margin=0.01, min_defaults=30, bootstrap_rounds=500, bootstrap_seed=0)
THRESHOLD = 0.2


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class World:
    """A holdout whose true default log-odds are known: labels are drawn from them."""

    def __init__(self, rows: int = 4000, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.logit = rng.normal(-1.5, 1.0, rows)  # about 22% defaults
        self.labels = (rng.random(rows) < sigmoid(self.logit)).astype(int)
        self.rng = rng

    def score(self, log_odds: np.ndarray) -> HoldoutScore:
        return score_predictions(self.labels, sigmoid(log_odds), THRESHOLD)

    def truth(self) -> HoldoutScore:
        return self.score(self.logit)

    def shifted(self, by: float) -> HoldoutScore:
        """Ranks exactly as well as the truth, predicts the wrong base rate (by < 0: too few defaults)."""
        return self.score(self.logit + by)

    def noisy(self, sd: float) -> HoldoutScore:
        return self.score(self.logit + self.rng.normal(0, sd, len(self.logit)))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def with_metrics(score: HoldoutScore, **changes: float) -> HoldoutScore:
    """The same predictions with some metrics overridden (to put a model exactly at or past a floor)."""
    return HoldoutScore(score.labels, score.probabilities, replace(score.metrics, **changes))


# --------------------------------------------------------------------------- known answers


def test_clearly_better_challenger_is_promoted(world):
    decision = decide(world.truth(), world.shifted(-0.8), RULE, FLOORS, champion_version="3")
    assert decision.verdict == "promote" and decision.promote
    assert decision.champion_version == "3"
    comparison = decision.comparison
    assert comparison.log_loss.upper < 0 and comparison.brier.upper < 0
    assert comparison.rows == 4000 and comparison.defaults == world.labels.sum()
    assert comparison.roc_auc.estimate == pytest.approx(0.0, abs=1e-12)  # same ranking
    assert any(reason.startswith("better on log loss") for reason in decision.reasons)
    assert any(reason.startswith("not worse on ROC AUC") for reason in decision.reasons)


def test_clearly_worse_challenger_is_rejected_as_not_better(world):
    decision = decide(world.shifted(-0.8), world.truth(), RULE, FLOORS, champion_version="3")
    assert decision.verdict == "not_better" and not decision.promote
    assert decision.comparison.log_loss.lower > 0
    assert any(reason.startswith("not better on log loss") for reason in decision.reasons)


def test_challenger_equal_within_noise_is_rejected_as_not_better(world):
    # Two models as good as each other: the truth seen through independent noise of the same size.
    challenger, champion = world.noisy(0.3), world.noisy(0.3)
    decision = decide(challenger, champion, RULE, FLOORS, champion_version="3")
    assert decision.verdict == "not_better"
    interval = decision.comparison.log_loss
    assert interval.lower < 0 < interval.upper  # the point values differ; the evidence does not
    assert challenger.metrics.log_loss != champion.metrics.log_loss


def test_identical_challenger_is_rejected_as_not_better(world):
    same = world.truth()
    decision = decide(same, same, RULE, FLOORS, champion_version="3")
    assert decision.verdict == "not_better"
    assert decision.comparison.log_loss == Interval(0.0, 0.0, 0.0)
    assert "not better" in decision.summary()


def test_too_few_defaults_is_insufficient_evidence_and_keeps_the_champion():
    small = World(rows=120, seed=3)  # 23 defaults
    assert small.labels.sum() < RULE.min_defaults
    decision = decide(small.truth(), small.shifted(-0.8), RULE, FLOORS, champion_version="5")
    assert decision.verdict == "insufficient_evidence" and not decision.promote
    assert "insufficient evidence" in decision.reasons[-1]
    assert "champion v5 is kept" in decision.reasons[-1]
    assert decision.comparison is not None and decision.comparison.rows == 120  # recorded, not used


def test_better_log_loss_but_worse_auc_beyond_the_margin_is_rejected(world):
    # A recalibrated but noisier challenger against a champion that ranks perfectly but predicts too few defaults.
    noisy = world.logit + 0.6 * world.rng.normal(0, 1, len(world.logit))
    slope = 1 / math.sqrt(1 + 0.36 * 0.6)
    challenger = world.score(-1.5 * (1 - slope) + slope * noisy)
    decision = decide(challenger, world.shifted(-1.2), RULE, FLOORS, champion_version="3")
    assert decision.comparison.log_loss.upper < 0
    assert decision.comparison.roc_auc.upper < -RULE.auc_margin  # significantly worse by more than the margin
    assert decision.verdict == "worse_auc"
    assert any(reason.startswith("worse on ROC AUC beyond the margin") for reason in decision.reasons)


def test_the_decision_is_reproducible_under_its_seed(world):
    challenger, champion = world.noisy(0.3), world.noisy(0.3)
    first = decide(challenger, champion, RULE, FLOORS, champion_version="3")
    assert decide(challenger, champion, RULE, FLOORS, champion_version="3") == first
    other_seed = decide(challenger, champion, replace(RULE, bootstrap_seed=1), FLOORS, champion_version="3")
    assert other_seed.comparison.log_loss.lower != first.comparison.log_loss.lower
    assert other_seed.comparison.log_loss.estimate == first.comparison.log_loss.estimate


def test_a_tighter_confidence_needs_more_evidence(world):
    challenger, champion = world.truth(), world.shifted(-0.15)
    loose = decide(challenger, champion, replace(RULE, confidence=0.5), FLOORS, champion_version="1")
    strict = decide(challenger, champion, replace(RULE, confidence=0.999), FLOORS, champion_version="1")
    assert loose.comparison.log_loss.upper < strict.comparison.log_loss.upper
    width = strict.comparison.log_loss.upper - strict.comparison.log_loss.lower
    assert width > loose.comparison.log_loss.upper - loose.comparison.log_loss.lower


def test_decide_refuses_scores_of_different_holdouts(world):
    other = World(rows=4000, seed=2)
    with pytest.raises(ValueError, match="same holdout rows"):
        decide(world.truth(), other.truth(), RULE, FLOORS, champion_version="1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"auc_margin": -0.01}, "AUC margin"),
        ({"min_defaults": 1}, "minimum defaults"),
        ({"bootstrap_rounds": 0}, "bootstrap rounds"),
    ],
)
def test_gate_rule_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        replace(RULE, **changes)


def test_rule_and_floors_from_settings(tmp_path):
    settings = Settings(
        state_dir=tmp_path,
        floor_min_auc=0.7,
        floor_max_calibration_error=0.03,
        gate_confidence=0.9,
        gate_auc_margin=0.02,
        gate_min_defaults=50,
        gate_bootstrap_rounds=200,
        gate_bootstrap_seed=7,
    )
    assert floors_from(settings) == Floors(0.7, 0.03)
    assert rule_from(settings) == GateRule(0.9, 0.02, 50, 200, 7)
    assert rule_from(Settings(state_dir=tmp_path)) == GateRule(0.95, 0.01, 30, 1000, 0)


# --------------------------------------------------------------------------- floors


def test_first_model_passing_the_floors_is_promoted(world):
    decision = decide(world.truth(), None, RULE, FLOORS)
    assert decision.promote and decision.champion is None and decision.comparison is None
    assert decision.reasons[0] == "no champion yet"
    assert decision.reasons[1].startswith("floors pass")


def test_first_model_is_promoted_without_the_minimum_defaults():
    small = World(rows=120, seed=3)
    assert decide(small.truth(), None, RULE, FLOORS).promote  # nothing to keep: the floors decide


def test_first_model_failing_a_floor_is_rejected(world):
    decision = decide(with_metrics(world.truth(), roc_auc=0.59), None, RULE, FLOORS)
    assert decision.verdict == "fails_floors"
    assert decision.reasons == ["fails the floors: ROC AUC 0.5900 below the floor 0.6000"]


def test_challenger_with_nan_auc_fails_the_floor(world):
    decision = decide(with_metrics(world.truth(), roc_auc=math.nan), None, RULE, FLOORS)
    assert decision.verdict == "fails_floors"
    assert any("ROC AUC nan" in reason for reason in decision.reasons)


def test_challenger_failing_a_floor_the_champion_passes_is_rejected_whatever_its_scores(world):
    challenger = with_metrics(world.truth(), calibration_error=0.12, calibration_error_noise=0.02)
    decision = decide(challenger, world.shifted(-0.8), RULE, FLOORS, champion_version="1")
    assert decision.verdict == "fails_floors"
    assert decision.reasons == ["fails the floors: calibration error 0.1200 above the floor 0.1000"]


def test_a_floor_the_champion_fails_worse_does_not_block(world):
    # The case: the challenger above the calibration floor, the champion twice as far above it.
    challenger = with_metrics(world.truth(), calibration_error=0.12, calibration_error_noise=0.02)
    champion = world.shifted(-1.5)
    assert champion.metrics.calibration_error > 0.12
    decision = decide(challenger, champion, RULE, FLOORS, champion_version="1")
    assert decision.verdict == "promote"
    (waived,) = [reason for reason in decision.reasons if "does not block" in reason]
    assert waived.startswith("calibration error 0.1200 above the floor 0.1000, but the champion fails it worse")
    assert f"calibration error {champion.metrics.calibration_error:.4f}" in waived


def test_a_floor_the_champion_fails_less_badly_still_blocks(world):
    challenger = with_metrics(world.truth(), calibration_error=0.2, calibration_error_noise=0.02)
    champion = with_metrics(world.shifted(-0.8), calibration_error=0.15, calibration_error_noise=0.02)
    decision = decide(challenger, champion, RULE, FLOORS, champion_version="1")
    assert decision.verdict == "fails_floors"


def test_challenger_with_nan_predictions_fails_the_floor_even_if_better(world):
    probabilities = world.truth().probabilities.copy()
    probabilities[:3] = np.nan
    challenger = score_predictions(world.labels, probabilities, THRESHOLD)
    decision = decide(challenger, world.shifted(-0.8), RULE, FLOORS, champion_version="1")
    assert decision.verdict == "fails_floors"
    assert any("3 NaN predictions" in reason for reason in decision.reasons)


def test_every_failed_floor_is_listed(world):
    broken = with_metrics(world.truth(), roc_auc=0.55, calibration_error=0.2, nan_predictions=1)
    decision = decide(broken, None, RULE, FLOORS)
    assert len(decision.reasons) == 3
    assert all(reason.startswith("fails the floors") for reason in decision.reasons)


def test_calibration_floor_widens_to_the_noise_of_a_small_holdout_only(world):
    small_holdout = with_metrics(world.truth(), calibration_error=0.11, calibration_error_noise=0.12)
    assert decide(small_holdout, None, RULE, FLOORS).promote
    worse_than_noise = with_metrics(world.truth(), calibration_error=0.13, calibration_error_noise=0.12)
    decision = decide(worse_than_noise, None, RULE, FLOORS)
    assert not decision.promote
    assert any("calibration error 0.1300 above the floor 0.1200" in reason for reason in decision.reasons)
    large_holdout = with_metrics(world.truth(), calibration_error=0.11, calibration_error_noise=0.01)
    assert not decide(large_holdout, None, RULE, FLOORS).promote  # the configured floor still holds


# --------------------------------------------------------------------------- record


def test_decision_summary_is_one_line_with_the_numbers(world):
    decision = decide(world.truth(), world.shifted(-0.8), RULE, FLOORS, champion_version="4")
    summary = decision.summary()
    assert "\n" not in summary
    assert summary.startswith("promote:")
    loss = decision.comparison.log_loss
    for text in (
        f"{decision.challenger.log_loss:.4f}",
        f"{decision.champion.log_loss:.4f}",
        f"[{loss.lower:+.4f}, {loss.upper:+.4f}]",
        "margin 0.0100",
        "champion v4",
    ):
        assert text in summary
    rejected = decide(world.shifted(-0.8), world.truth(), RULE, FLOORS, champion_version="4").summary()
    assert rejected.startswith("reject (not better):")


def test_report_rows_give_both_models_and_the_differences(world):
    decision = decide(world.truth(), world.shifted(-0.8), RULE, FLOORS, champion_version="4")
    rows = {label: (ours, theirs) for label, ours, theirs in decision.metric_rows()}
    assert rows["log loss"] == (f"{decision.challenger.log_loss:.4f}", f"{decision.champion.log_loss:.4f}")
    assert float(rows["calibration intercept (0: calibrated)"][1]) > 0.5  # the champion predicts too few defaults
    assert abs(float(rows["calibration intercept (0: calibrated)"][0])) < 0.1
    measures = [row[0] for row in decision.difference_rows()]
    assert measures == ["log loss (decides)", "ROC AUC (harm guard)", "Brier score"]
    assert decision.difference_rows()[0][3].startswith("better")
    first = decide(world.truth(), None, RULE, FLOORS)
    assert first.difference_rows() == [] and all(theirs == "n/a" for _, _, theirs in first.metric_rows())


def test_decision_tags_are_strings_with_full_precision(world):
    decision = decide(world.truth(), world.shifted(-0.8), RULE, FLOORS, champion_version="2")
    tags = decision.to_tags()
    assert all(isinstance(value, str) for value in tags.values())
    assert tags["promotion_decision"] == "promote" and tags["promotion_verdict"] == "promote"
    assert tags["compared_with_version"] == "2"
    assert float(tags["challenger_log_loss"]) == decision.challenger.log_loss
    assert float(tags["champion_calibration_slope"]) == decision.champion.calibration_slope
    assert float(tags["diff_log_loss_upper"]) == decision.comparison.log_loss.upper
    assert float(tags["diff_roc_auc_p_value"]) == decision.comparison.roc_auc_p_value
    assert tags["gate_confidence"] == "0.95" and tags["gate_min_defaults"] == "30"
    first = decide(world.truth(), None, RULE, FLOORS).to_tags()
    assert first["champion_roc_auc"] == "none" and first["compared_with_version"] == "none"
    assert first["diff_log_loss"] == "none" and first["compared_rows"] == "none"


def test_decision_metrics_carry_every_number_of_the_tags(world):
    decision = decide(world.truth(), world.shifted(-0.8), RULE, FLOORS, champion_version="2")
    metrics = decision.to_metrics()
    assert metrics["gate_diff_log_loss_upper"] == decision.comparison.log_loss.upper
    assert metrics["gate_champion_calibration_intercept"] == decision.champion.calibration_intercept
    assert metrics["gate_confidence"] == 0.95 and metrics["gate_compared_rows"] == 4000
    assert all(isinstance(value, float) for value in metrics.values())
    for key, value in decision.to_tags().items():
        if key.startswith("promotion_") or key == "compared_with_version":
            continue
        name = key if key.startswith("gate_") else f"gate_{key}"
        assert float(value) == metrics[name] or (math.isnan(float(value)) and math.isnan(metrics[name])), key


DECISIONS = {
    "promote": lambda w: decide(w.truth(), w.shifted(-0.8), RULE, FLOORS, champion_version="2"),
    "not-better": lambda w: decide(w.noisy(0.3), w.noisy(0.3), RULE, FLOORS, champion_version="7"),
    "insufficient": lambda _: decide(
        World(120, 3).truth(), World(120, 3).shifted(-1), RULE, FLOORS, champion_version="1"
    ),
    "floors-no-champion": lambda w: decide(with_metrics(w.truth(), roc_auc=0.5), None, RULE, FLOORS),
    "floor-waived": lambda w: decide(
        with_metrics(w.truth(), calibration_error=0.12, calibration_error_noise=0.02),
        w.shifted(-1.5),
        RULE,
        FLOORS,
        champion_version="1",
    ),
    "no-reasons-no-floors": lambda w: Decision("not_better", [], w.truth().metrics, None, RULE),
}


@pytest.mark.parametrize("make", DECISIONS.values(), ids=DECISIONS.keys())
def test_decision_from_tags_round_trips_to_tags(world, make):
    decision = make(world)
    restored = Decision.from_tags(decision.to_tags())
    assert restored == decision
    assert restored.floors == decision.floors
    assert restored.to_tags() == decision.to_tags()


def test_every_verdict_round_trips(world):
    for verdict in VERDICTS:
        decision = Decision(verdict, ["why"], world.truth().metrics, None, RULE)
        assert Decision.from_tags(decision.to_tags()).verdict == verdict


def test_decision_from_tags_ignores_other_tags_and_keeps_nan_metrics(world):
    challenger = with_metrics(world.truth(), precision_at_threshold=math.nan)
    tags = decide(challenger, None, RULE, FLOORS).to_tags() | {"promotion_outcome": "promoted", "git_commit": "abc"}
    restored = Decision.from_tags(tags)
    assert math.isnan(restored.challenger.precision_at_threshold)
    assert restored.challenger.rows == 4000 and isinstance(restored.challenger.rows, int)


def test_decision_from_tags_names_a_missing_or_bad_tag(world):
    tags = decide(world.truth(), world.shifted(-0.8), RULE, FLOORS, champion_version="1").to_tags()
    with pytest.raises(ValueError, match="champion_log_loss"):
        Decision.from_tags({key: value for key, value in tags.items() if key != "champion_log_loss"})
    with pytest.raises(ValueError, match="challenger_rows must be an integer"):
        Decision.from_tags(tags | {"challenger_rows": "many"})
    with pytest.raises(ValueError, match="promotion_verdict"):
        Decision.from_tags(tags | {"promotion_verdict": "maybe"})
    with pytest.raises(ValueError, match="diff_log_loss_upper"):
        Decision.from_tags({key: value for key, value in tags.items() if key != "diff_log_loss_upper"})
    with pytest.raises(ValueError, match="gate_confidence"):
        Decision.from_tags({key: value for key, value in tags.items() if key != "gate_confidence"})


def test_training_report_has_both_models_the_differences_and_the_decision(world):
    from datetime import UTC, datetime

    from mlstack.training.steps import ChampionScore, TrainingOutcome, training_markdown

    challenger, champion = world.truth(), world.shifted(-0.8)
    decision = decide(challenger, champion, RULE, FLOORS, champion_version="1")
    outcome = TrainingOutcome(
        version="2",
        run_id="run",
        metrics=challenger.metrics,
        champion=ChampionScore("1", champion),
        decision=decision,
        promoted=True,
        leakage=[],
        window_start=datetime(2025, 1, 1, tzinfo=UTC),
        window_end=datetime(2025, 6, 1, tzinfo=UTC),
        fingerprint="4000:abc",
    )
    report = training_markdown(outcome)
    assert "| metric (holdout) | challenger v2 | champion v1 |" in report
    for label, ours, theirs in decision.metric_rows():
        assert f"| {label} | {ours} | {theirs} |" in report
    for measure, value, interval, verdict in decision.difference_rows():
        assert f"| {measure} | {value} | {interval} | {verdict} |" in report
    assert "**Decision: promote**" in report
    assert all(f"- {reason}" in report for reason in decision.reasons)
    assert "500 paired bootstrap rounds, seed 0" in report
    assert "Candidates on the same holdout" not in report  # one candidate: no table


def test_training_report_has_the_candidates_table_of_a_retrain(world):
    from datetime import UTC, datetime

    from mlstack.training.steps import CandidateResult, ChampionScore, TrainingOutcome, training_markdown

    challenger, champion = world.truth(), world.shifted(-0.8)
    candidates = [
        CandidateResult("retrained", 0.52, 0.17, 0.75, 0.05, 1.1, "Platt"),
        CandidateResult("recalibrated", 0.53, 0.18, 0.74, 0.01, 1.0, "Platt"),
        CandidateResult("continued", 0.51, 0.16, 0.76, 0.02, 0.9, "Platt"),
    ]
    outcome = TrainingOutcome(
        version="2",
        run_id="run",
        metrics=challenger.metrics,
        champion=ChampionScore("1", champion),
        decision=decide(challenger, champion, RULE, FLOORS, champion_version="1"),
        promoted=True,
        leakage=[],
        window_start=datetime(2025, 1, 1, tzinfo=UTC),
        window_end=datetime(2025, 6, 1, tzinfo=UTC),
        fingerprint="4000:abc",
        candidates=candidates,
        challenger_kind="continued",
        calibrator="Platt a=-1.0000, b=0.5000 on 600 rows (150 defaults)",
    )
    report = training_markdown(outcome)
    assert "| candidate | log loss | Brier | ROC AUC | calibration intercept | calibration slope |" in report
    assert "| recalibrated: the champion recalibrated on the calibration slice | 0.5300 | 0.1800 | 0.7400 |" in report
    assert "| continued (challenger): the champion's trees continued on the training window | 0.5100 |" in report
    assert "Calibrator: Platt a=-1.0000, b=0.5000 on 600 rows (150 defaults)." in report


def test_decision_compares_by_value(world):
    a = decide(world.truth(), None, RULE, FLOORS)
    assert a == replace(a)


def test_plan_rollback_returns_previous_champion():
    assert plan_rollback(["1", "2"], "3") == "2"


def test_plan_rollback_skips_entries_equal_to_current_champion():
    # A crash between recording history and moving the alias can leave the champion itself last.
    assert plan_rollback(["1", "2", "3"], "3") == "2"


def test_plan_rollback_without_previous_champion_returns_none():
    assert plan_rollback([], "1") is None
    assert plan_rollback(["1"], "1") is None
    assert plan_rollback([], None) is None


def test_plan_rollback_without_current_champion_restores_last_one():
    assert plan_rollback(["1", "2"], None) == "2"


def test_history_after_rollback_drops_target_and_later_entries():
    assert history_after_rollback(["1", "2", "3"], "2") == ["1"]
    assert history_after_rollback(["1"], "1") == []


def test_history_after_promotion_appends_previous_champion_once():
    assert history_after_promotion(["1"], "2") == ["1", "2"]
    assert history_after_promotion(["1", "2"], "2") == ["1", "2"]
    assert history_after_promotion([], None) == []
