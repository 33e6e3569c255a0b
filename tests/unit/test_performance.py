"""The performance monitor on simulated matured outcomes: miscalibration and its direction, maturity, the event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlstack.data import generator
from mlstack.monitoring import performance
from mlstack.monitoring import steps as monitoring_steps
from mlstack.monitoring.performance import PerformanceRule
from mlstack.settings import Settings
from mlstack.simulation import traffic
from mlstack.simulation.scenarios import SCENARIOS

SENT = datetime(2026, 3, 10, 12, tzinfo=UTC)
RULE = PerformanceRule(outcome_months=12, min_rows=200, confidence=0.95, threshold=0.2)
MATURED = SENT + RULE.outcome_window + timedelta(days=1)


def outcomes(p: np.ndarray, y: np.ndarray, version: str = "1", sent: datetime = SENT) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_timestamp": pd.Timestamp(sent) + pd.to_timedelta(np.arange(len(p)), unit="s"),
            "model_version": version,
            "default_probability": p,
            "defaulted": y.astype(int),
        }
    )


def simulated(n: int, seed: int, factor: float = 1.0) -> pd.DataFrame:
    """Predictions p and outcomes drawn with probability min(1, factor * p): calibrated at factor 1."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 12, n)
    return outcomes(p, rng.random(n) < np.minimum(1.0, factor * p))


def judge(frame: pd.DataFrame, as_of: datetime = MATURED) -> performance.PerformanceReport:
    return performance.assess_performance(frame, model_name="m", as_of=as_of, rule=RULE)


@pytest.mark.parametrize(("factor", "direction"), [(1.4, "under-predicts"), (0.6, "over-predicts")])
def test_performance_miscalibration_is_flagged_with_its_direction(factor, direction):
    report = judge(simulated(2_000, seed=1, factor=factor))
    (cohort,) = report.cohorts
    assert cohort.direction == direction and cohort.degraded
    assert report.degraded_versions == ["1"]
    outside = cohort.realised_rate > cohort.expected_high if factor > 1 else cohort.realised_rate < cohort.expected_low
    assert outside and "DEGRADED" in report.summary()


def test_performance_calibrated_model_is_not_flagged_more_often_than_its_confidence_allows():
    flagged = sum(judge(simulated(1_000, seed=100 + i)).cohorts[0].degraded for i in range(200))
    # 5 % expected; P(Binomial(200, 0.05) > 18) < 0.5 %: a rate above 5 % would show here.
    assert flagged <= 18


def test_performance_calibrated_cohort_reports_its_numbers():
    (cohort,) = judge(simulated(5_000, seed=2)).cohorts
    assert cohort.direction == "calibrated" and not cohort.degraded
    assert cohort.expected_low < cohort.predicted_rate < cohort.expected_high
    assert cohort.realised_low < cohort.realised_rate < cohort.realised_high
    assert 0.5 < cohort.roc_auc_low < cohort.roc_auc < cohort.roc_auc_high < 1
    assert cohort.calibration_slope == pytest.approx(1.0, abs=0.25)
    assert 0 < cohort.approval_rate < 1 and 0 < cohort.approved_default_rate < cohort.realised_rate
    assert set(cohort.metrics()) >= {"predicted_rate", "realised_rate", "roc_auc", "degraded"}


def test_performance_waits_for_the_outcome_window_to_close():
    frame = simulated(2_000, seed=3, factor=2.0)
    early = judge(frame, as_of=SENT + timedelta(days=200))
    assert early.cohorts == () and early.maturing == 2_000 and early.degraded_versions == []
    assert judge(frame).degraded_versions == ["1"]


def test_performance_small_cohorts_and_unknown_versions_are_not_judged():
    frame = pd.concat([simulated(150, seed=4, factor=3.0), outcomes(np.full(10, 0.1), np.ones(10), version="")])
    report = judge(frame)
    (cohort,) = report.cohorts
    assert not cohort.judged and cohort.direction == "not judged" and report.degraded == []
    assert report.unattributed == 10


def test_performance_rejects_a_frame_without_outcomes():
    with pytest.raises(performance.PerformanceError, match="defaulted"):
        judge(simulated(10, seed=5).drop(columns=["defaulted"]))


def test_performance_event_is_claimed_once_per_cooldown_and_apart_from_drift(tmp_path):
    settings = Settings(state_dir=tmp_path, performance_event_cooldown_minutes=60)
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert monitoring_steps.claim_performance_event(settings, "3", now)
    assert not monitoring_steps.claim_performance_event(settings, "3", now + timedelta(minutes=59))
    assert monitoring_steps.claim_drift_event(settings, "3", now + timedelta(minutes=1))  # its own record
    assert monitoring_steps.claim_performance_event(settings, "3", now + timedelta(minutes=60))


def calibrated_probability(logit: np.ndarray) -> np.ndarray:
    """E[sigmoid(logit + noise)] over the generator's logit noise: what a perfectly calibrated model predicts."""
    nodes, weights = np.polynomial.hermite.hermgauss(40)
    shifted = logit[:, None] + np.sqrt(2) * generator.LOGIT_NOISE_SD * nodes[None, :]
    return np.asarray((weights / (1 + np.exp(-shifted))).sum(axis=1) / np.sqrt(np.pi))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    data = tmp_path_factory.mktemp("performance-data")
    generator.generate_data(data, customers=2_000, months=6, end=datetime(2026, 1, 1, tzinfo=UTC), seed=3)
    return traffic.latest_snapshots(data)


def scenario_outcomes(snapshots: traffic.Snapshots, name: str, seed: int) -> pd.DataFrame:
    """Traffic of scenario `name` scored by a model calibrated on normal traffic, with its outcomes realised."""
    scenario, normal = SCENARIOS[name], SCENARIOS["normal"]
    if scenario.moves_features:
        snapshots = traffic.shift_snapshots(snapshots, scenario, SENT, seed)
    applications = traffic.draw_applications(snapshots, scenario, 1_500, seed)
    predicted = calibrated_probability(traffic.default_logit(applications, snapshots, normal))
    answered = applications.assign(sent_at=SENT)
    realised = traffic.realise_outcomes(answered, snapshots, scenario, first_id=1, seed=seed + 1)
    return outcomes(predicted, realised["defaulted"].to_numpy())


def test_performance_recession_raises_the_event_once_its_outcomes_mature(snapshots, tmp_path):
    settings = Settings(state_dir=tmp_path, performance_event_cooldown_minutes=60)
    recession = scenario_outcomes(snapshots, "recession", seed=11)
    before = judge(recession, as_of=SENT + timedelta(days=300))
    assert before.degraded_versions == [] and before.maturing == len(recession)
    after = judge(recession)
    (cohort,) = after.cohorts
    assert cohort.direction == "under-predicts"
    assert cohort.realised_rate > 1.3 * cohort.predicted_rate
    claims = [monitoring_steps.claim_performance_event(settings, v, MATURED) for v in after.degraded_versions] + [
        monitoring_steps.claim_performance_event(settings, v, MATURED + timedelta(minutes=5))
        for v in after.degraded_versions
    ]
    assert claims == [True, False]


def test_performance_normal_traffic_of_a_calibrated_model_is_not_degraded(snapshots):
    report = judge(scenario_outcomes(snapshots, "normal", seed=12))
    assert [c.direction for c in report.cohorts] == ["calibrated"]
