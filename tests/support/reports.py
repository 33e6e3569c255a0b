"""Results of the batch flows, built directly: drift reports and gate decisions with known numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from mlstack.monitoring.drift import ColumnDrift, DriftReport
from mlstack.training.evaluation import score_predictions
from mlstack.training.promotion import Decision, Floors, GateRule, decide

WINDOW_END = datetime(2026, 1, 2, tzinfo=UTC)
FLOORS = Floors(min_auc=0.60, max_calibration_error=0.10)
RULE = GateRule(confidence=0.95, auc_margin=0.01, min_defaults=30, bootstrap_rounds=200, bootstrap_seed=0)


def drift_report(columns: tuple[ColumnDrift, ...], version: str = "3", rows: int = 1000) -> DriftReport:
    """A judged report of `columns` (verdict "drift" if any drifted) for a one-hour window ending WINDOW_END."""
    return DriftReport(
        model_name="credit-risk",
        model_version=version,
        window_start=WINDOW_END - timedelta(hours=1),
        window_end=WINDOW_END,
        rows=rows,
        windows=12,
        min_rows=200,
        verdict="drift" if any(column.drifted for column in columns) else "no_drift",
        features=columns,
    )


def unjudged_report(version: str = "3") -> DriftReport:
    """A report with too few rows to judge."""
    return DriftReport(
        model_name="credit-risk",
        model_version=version,
        window_start=WINDOW_END - timedelta(hours=1),
        window_end=WINDOW_END,
        rows=10,
        windows=1,
        min_rows=200,
        verdict="insufficient_data",
    )


UNEMPLOYMENT = ColumnDrift("unemployment_rate", "numeric", "hellinger", 0.6, 0.4, drifted=True)
INCOME = ColumnDrift("annual_income", "numeric", "hellinger", 0.1, 0.4, drifted=False)
PURPOSE = ColumnDrift("loan_purpose", "categorical", "chi-square", 0.2, 0.001, drifted=False)


def better_challenger_decision(champion_version: str = "2") -> Decision:
    """The gate on a holdout where the challenger predicts the true risk and the champion a biased one: promote."""
    rng = np.random.default_rng(1)
    logit = rng.normal(-1.5, 1.0, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(int)
    truth = score_predictions(labels, 1 / (1 + np.exp(-logit)), 0.2)
    biased = score_predictions(labels, 1 / (1 + np.exp(-(logit - 0.8))), 0.2)
    return decide(truth, biased, RULE, FLOORS, champion_version=champion_version)
