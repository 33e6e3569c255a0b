"""Drift scoring on synthetic whylogs profiles: verdicts, the minimum-sample rule, attribution, cooldown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlstack.data import profiles
from mlstack.monitoring import drift
from mlstack.monitoring import steps as monitoring_steps
from mlstack.monitoring.drift import DriftThresholds, GatheredProfiles
from mlstack.settings import Settings

WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC))
COLUMNS = ("income", "score", "utilisation", "purpose", drift.PREDICTION)


def population(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "income": np.exp(rng.normal(np.log(60_000), 0.4, n)),
            "score": np.clip(rng.normal(690, 60, n), 300, 850),
            "utilisation": rng.beta(2, 5, n),
            "purpose": rng.choice(["car", "card", "home"], n, p=[0.5, 0.3, 0.2]),
            drift.PREDICTION: rng.beta(1.5, 12, n),
        }
    )


@pytest.fixture(scope="module")
def reference():
    return profiles.profile_frame(population(20_000, seed=0))


def judge(frame: pd.DataFrame, reference, min_rows: int = 200) -> drift.DriftReport:
    gathered = GatheredProfiles(profiles.profile_frame(frame), 1, len(frame))
    return drift.assess_drift(
        gathered,
        reference,
        model_name="m",
        model_version="1",
        window=WINDOW,
        thresholds=DriftThresholds(min_rows=min_rows),
        columns=COLUMNS,
    )


def test_drift_clean_windows_rarely_alarm(reference):
    reports = [judge(population(500, seed=100 + i), reference) for i in range(20)]
    assert sum(report.verdict == "drift" for report in reports) <= 1
    assert all(report.verdict != "insufficient_data" for report in reports)


def test_drift_clean_windows_alarm_no_more_often_than_alpha(reference):
    alpha = 0.05
    alarms = sum(judge(population(400, seed=1_000 + i), reference).verdict == "drift" for i in range(200))
    # Holm bounds the family-wise rate by alpha; P(Binomial(200, 0.05) > 18) < 0.5 %, so a rule that
    # alarmed more often than alpha on clean windows would show here (the seeds are fixed).
    assert DriftThresholds().alpha == alpha
    assert alarms <= 18, alarms


def test_drift_single_numeric_shift_is_attributed_to_that_feature(reference):
    shifted = population(800, seed=7)
    shifted["score"] -= 120
    report = judge(shifted, reference)
    assert report.verdict == "drift"
    # This sample's own income happens to differ from the reference (raw KS p = 0.0003 on the rows
    # themselves, unshifted): the rule may name it too, but the shifted column leads.
    assert report.drifted_features[0] == "score"
    assert report.ranked()[0].column == "score"


def test_drift_categorical_shift_uses_chi_square(reference):
    shifted = population(800, seed=8)
    shifted["purpose"] = np.random.default_rng(8).choice(["car", "card", "home"], 800, p=[0.2, 0.3, 0.5])
    report = judge(shifted, reference)
    purpose = next(c for c in report.features if c.column == "purpose")
    assert purpose.algorithm == "chi-square" and purpose.kind == "categorical"
    assert report.drifted_features == ["purpose"]


def test_drift_prediction_shift_is_reported_separately(reference):
    shifted = population(800, seed=9)
    shifted[drift.PREDICTION] = np.clip(shifted[drift.PREDICTION] * 3 + 0.1, 0, 1)
    report = judge(shifted, reference)
    assert report.verdict == "drift"
    assert report.drifted_features == []
    assert report.prediction is not None and report.prediction.drifted
    assert report.payload()["prediction_drifted"] is True


def test_drift_context_columns_need_a_larger_effect_than_other_columns(reference):
    window = population(5_000, seed=14)
    window[drift.PREDICTION] *= 1.15  # KS D ~0.07: significant at 5,000 rows, below the context floor
    window["score"] += 0.5 * 60  # half a standard deviation: D ~0.2, above the numeric floor
    report = judge(window, reference)
    prediction = report.prediction
    assert prediction is not None and prediction.score < 0.05 and prediction.statistic < 0.3
    assert not prediction.drifted and prediction.possible
    assert report.drifted_features == ["score"]


def test_drift_a_significant_but_small_numeric_shift_is_possible_not_drift(reference):
    window = population(5_000, seed=14)
    window["score"] += 0.25 * 60  # a quarter of a standard deviation: D ~0.1, significant at 5,000 rows
    report = judge(window, reference)
    [score] = [column for column in report.features if column.column == "score"]
    assert score.score < 0.05 and 0.05 < score.statistic < DriftThresholds().numeric_min_effect
    assert not score.drifted and score.possible
    assert report.verdict == "no_drift"


def test_drift_too_few_rows_is_not_judged(reference):
    shifted = population(150, seed=10)
    shifted["score"] -= 300  # obvious drift, but too few rows to say so
    report = judge(shifted, reference, min_rows=200)
    assert report.verdict == "insufficient_data"
    assert report.features == () and "fewer than 200" in report.summary()
    assert "at least 200" in drift.drift_markdown(report)


def test_drift_no_profiles_is_not_judged(reference):
    report = drift.assess_drift(
        GatheredProfiles(None, 0, 0),
        reference,
        model_name="m",
        model_version="1",
        window=WINDOW,
        thresholds=DriftThresholds(),
    )
    assert report.verdict == "insufficient_data" and report.rows == 0


def test_drift_column_absent_from_reference_is_listed_not_scored(reference):
    frame = population(500, seed=11).assign(extra=1.0)
    gathered = GatheredProfiles(profiles.profile_frame(frame), 1, 500)
    report = drift.assess_drift(
        gathered,
        reference,
        model_name="m",
        model_version="1",
        window=WINDOW,
        thresholds=DriftThresholds(),
        columns=["income", "extra"],
    )
    assert report.missing_columns == ("extra",)


def test_severity_is_one_at_the_threshold():
    ks = drift.ColumnDrift("a", "numeric", "kolmogorov-smirnov", 0.05, 0.05, False)
    chi = drift.ColumnDrift("b", "categorical", "chi-square", 0.001, 0.001, False)
    assert ks.severity == pytest.approx(1.0) and chi.severity == pytest.approx(1.0)


def test_holm_adjusts_in_step_down_order():
    assert drift.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_drift_missing_values_are_tested_as_a_rate(reference):
    shifted = population(800, seed=13)
    shifted.loc[shifted.sample(frac=0.1, random_state=13).index, "utilisation"] = np.nan
    report = judge(shifted, reference)
    utilisation = next(c for c in report.features if c.column == "utilisation")
    assert utilisation.algorithm == "missing-rate" and utilisation.drifted
    assert utilisation.statistic == pytest.approx(0.1)


def test_drift_markdown_and_chart_name_every_column(reference, tmp_path):
    shifted = population(800, seed=12)
    shifted["income"] *= 0.5
    report = judge(shifted, reference)
    markdown = drift.drift_markdown(report)
    for column in COLUMNS:
        assert column in markdown
    assert "**DRIFT**" in markdown
    assert drift.plot_drift(report, tmp_path / "chart.png").stat().st_size > 1000
    assert "income" in drift.drift_chart_markdown(report)


def test_should_emit_respects_the_cooldown():
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    cooldown = timedelta(minutes=30)
    assert drift.should_emit(None, now, cooldown)
    assert not drift.should_emit(now - timedelta(minutes=29), now, cooldown)
    assert drift.should_emit(now - timedelta(minutes=30), now, cooldown)


def test_claim_drift_event_once_per_version_within_cooldown(tmp_path):
    settings = Settings(state_dir=tmp_path, drift_event_cooldown_minutes=30)
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert monitoring_steps.claim_drift_event(settings, "3", now)
    assert not monitoring_steps.claim_drift_event(settings, "3", now + timedelta(minutes=5))
    assert monitoring_steps.claim_drift_event(
        settings, "4", now + timedelta(minutes=5)
    )  # another version: its own clock
    assert monitoring_steps.claim_drift_event(settings, "3", now + timedelta(minutes=31))


def test_resolve_window_defaults_to_lookback_and_rejects_inverted_bounds(tmp_path):
    settings = Settings(state_dir=tmp_path, monitor_lookback_minutes=60)
    end = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert monitoring_steps.resolve_window(settings, None, end, None) == (end - timedelta(minutes=60), end)
    with pytest.raises(monitoring_steps.MonitorError, match="before end"):
        monitoring_steps.resolve_window(settings, end, end - timedelta(minutes=1), None)
