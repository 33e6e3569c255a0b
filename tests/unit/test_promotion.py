"""Champion / challenger gate and rollback planning (pure rules)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from mlstack.settings import Settings
from mlstack.training.evaluation import Metrics
from mlstack.training.promotion import (
    Decision,
    Floors,
    decide,
    floors_from,
    history_after_promotion,
    history_after_rollback,
    plan_rollback,
)

FLOORS = Floors(min_auc=0.65, max_calibration_error=0.05)
MARGIN = 0.002


def metrics(roc_auc: float = 0.75, calibration_error: float = 0.01, nan_predictions: int = 0) -> Metrics:
    return Metrics(
        roc_auc=roc_auc,
        pr_auc=0.4,
        log_loss=0.3,
        brier=0.1,
        calibration_error=calibration_error,
        threshold=0.2,
        precision_at_threshold=0.5,
        recall_at_threshold=0.6,
        decline_rate_at_threshold=0.15,
        rows=1000,
        positives=120,
        nan_predictions=nan_predictions,
    )


def test_decide_promotes_challenger_beating_champion_by_margin():
    decision = decide(metrics(0.760), metrics(0.750), MARGIN, FLOORS, champion_version="3")
    assert decision.promote
    assert decision.champion_version == "3"
    assert "beats the champion" in " ".join(decision.reasons)


def test_decide_promotes_challenger_exactly_at_margin():
    champion = metrics(0.75)
    challenger = metrics(champion.roc_auc + MARGIN)
    assert decide(challenger, champion, MARGIN, FLOORS, champion_version="1").promote


def test_decide_refuses_challenger_within_margin():
    decision = decide(metrics(0.7515), metrics(0.750), MARGIN, FLOORS, champion_version="1")
    assert not decision.promote
    assert "does not beat the champion by the margin" in decision.reasons[-1]


def test_decide_refuses_identical_challenger_with_positive_margin():
    same = metrics(0.75)
    assert not decide(same, same, MARGIN, FLOORS, champion_version="1").promote


def test_decide_refuses_worse_challenger():
    decision = decide(metrics(0.70), metrics(0.75), MARGIN, FLOORS, champion_version="1")
    assert not decision.promote
    assert "-0.0500" in decision.reasons[-1]


def test_decide_refuses_challenger_with_nan_predictions_even_if_better():
    decision = decide(metrics(0.90, nan_predictions=3), metrics(0.75), MARGIN, FLOORS, champion_version="1")
    assert not decision.promote
    assert any("3 NaN predictions" in reason for reason in decision.reasons)


def test_decide_refuses_challenger_with_auc_below_floor():
    decision = decide(metrics(0.60), None, MARGIN, FLOORS)
    assert not decision.promote
    assert any("ROC AUC 0.6000 below the floor 0.6500" in reason for reason in decision.reasons)


def test_decide_refuses_challenger_with_nan_auc():
    decision = decide(metrics(math.nan), None, MARGIN, FLOORS)
    assert not decision.promote
    assert any("ROC AUC nan" in reason for reason in decision.reasons)


def test_decide_refuses_badly_calibrated_challenger():
    decision = decide(metrics(0.80, calibration_error=0.09), metrics(0.75), MARGIN, FLOORS, champion_version="1")
    assert not decision.promote
    assert any("calibration error 0.0900 above the floor 0.0500" in reason for reason in decision.reasons)


def test_calibration_floor_widens_to_the_noise_of_a_small_holdout_only():
    small_holdout = replace(metrics(0.80, calibration_error=0.07), calibration_error_noise=0.08)
    assert decide(small_holdout, None, MARGIN, FLOORS).promote
    worse_than_noise = replace(small_holdout, calibration_error=0.09)
    decision = decide(worse_than_noise, None, MARGIN, FLOORS)
    assert not decision.promote
    assert any("calibration error 0.0900 above the floor 0.0800" in reason for reason in decision.reasons)
    large_holdout = replace(metrics(0.80, calibration_error=0.06), calibration_error_noise=0.01)
    assert not decide(large_holdout, None, MARGIN, FLOORS).promote  # the configured floor still holds


def test_decide_lists_every_failed_floor():
    decision = decide(metrics(0.55, calibration_error=0.2, nan_predictions=1), None, MARGIN, FLOORS)
    assert len(decision.reasons) == 3
    assert all(reason.startswith("fails the floors") for reason in decision.reasons)


def test_decide_promotes_first_model_passing_floors():
    decision = decide(metrics(0.66), None, MARGIN, FLOORS)
    assert decision.promote
    assert decision.champion is None
    assert decision.reasons[0] == "no champion yet"


def test_decide_refuses_first_model_failing_floors():
    assert not decide(metrics(0.64), None, MARGIN, FLOORS).promote


def test_decide_refuses_when_champion_auc_is_nan():
    decision = decide(metrics(0.80), metrics(math.nan), MARGIN, FLOORS, champion_version="1")
    assert not decision.promote
    assert "cannot compare" in decision.reasons[-1]


def test_decide_rejects_negative_margin():
    with pytest.raises(ValueError, match="margin"):
        decide(metrics(), None, -0.01, FLOORS)


def test_decision_summary_is_one_line_with_the_numbers():
    summary = decide(metrics(0.7612), metrics(0.7501), MARGIN, FLOORS, champion_version="4").summary()
    assert "\n" not in summary
    assert summary.startswith("promote:")
    for text in ("0.7612", "0.7501", "+0.0111", "0.0020", "champion v4"):
        assert text in summary


def test_decision_tags_are_strings_with_full_precision():
    challenger, champion = metrics(0.761234567891), metrics(0.75)
    tags = decide(challenger, champion, MARGIN, FLOORS, champion_version="2").to_tags()
    assert all(isinstance(value, str) for value in tags.values())
    assert tags["promotion_decision"] == "promote"
    assert tags["compared_with_version"] == "2"
    assert float(tags["challenger_roc_auc"]) == challenger.roc_auc
    assert float(tags["champion_roc_auc"]) == champion.roc_auc
    first = decide(metrics(0.5), None, MARGIN, FLOORS).to_tags()
    assert first["promotion_decision"] == "reject"
    assert first["champion_roc_auc"] == "none"
    assert first["compared_with_version"] == "none"


@pytest.mark.parametrize(
    "decision",
    [
        decide(metrics(0.761234567891), metrics(0.75), MARGIN, FLOORS, champion_version="2"),
        decide(metrics(0.7601), metrics(0.76), MARGIN, FLOORS, champion_version="7"),
        decide(metrics(0.5), None, MARGIN, FLOORS),
        decide(replace(metrics(), calibration_error_noise=0.0712345), None, 0.0, FLOORS),
        Decision(False, [], metrics(), None, 0.01),
    ],
    ids=["promote", "reject-margin", "reject-floors-no-champion", "noise-widened", "no-reasons-no-floors"],
)
def test_decision_from_tags_round_trips_to_tags(decision):
    restored = Decision.from_tags(decision.to_tags())
    assert restored == decision
    assert restored.floors == decision.floors
    assert restored.to_tags() == decision.to_tags()


def test_decision_from_tags_ignores_other_tags_and_keeps_nan_metrics():
    challenger = replace(metrics(), precision_at_threshold=math.nan)
    tags = decide(challenger, None, MARGIN, FLOORS).to_tags() | {"promotion_outcome": "promoted", "git_commit": "abc"}
    restored = Decision.from_tags(tags)
    assert math.isnan(restored.challenger.precision_at_threshold)
    assert restored.challenger.rows == 1000 and isinstance(restored.challenger.rows, int)


def test_decision_from_tags_names_a_missing_or_bad_tag():
    tags = decide(metrics(), metrics(0.7), MARGIN, FLOORS, champion_version="1").to_tags()
    with pytest.raises(ValueError, match="champion_log_loss"):
        Decision.from_tags({key: value for key, value in tags.items() if key != "champion_log_loss"})
    with pytest.raises(ValueError, match="challenger_rows must be an integer"):
        Decision.from_tags(tags | {"challenger_rows": "many"})
    with pytest.raises(ValueError, match="promotion_decision"):
        Decision.from_tags(tags | {"promotion_decision": "maybe"})


def test_floors_from_settings(tmp_path):
    settings = Settings(state_dir=tmp_path, floor_min_auc=0.7, floor_max_calibration_error=0.03)
    assert floors_from(settings) == Floors(0.7, 0.03)


def test_decision_compares_by_value():
    a = decide(metrics(), None, MARGIN, FLOORS)
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
