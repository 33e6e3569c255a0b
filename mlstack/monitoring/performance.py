"""The model's own performance on matured loans: per cohort and model version, predicted vs realised defaults.

An application's outcome is known once its outcome window (`outcome_months`, 12: defaults come 2-12
months after the application) has closed. Matured applications are grouped into cohorts by model
version and calendar month (UTC) of application; each cohort with at least `min_rows` applications
is judged:

- calibration in the large: the realised default rate against the interval in which it would fall
  with probability `confidence` if the predictions were right (mean prediction
  ± z·sqrt(Σp(1-p))/n, the normal approximation of the Poisson-binomial count of defaults). Outside it,
  the cohort is *degraded*: `under-predicts` when more defaulted than the interval allows (what a
  recession does), `over-predicts` when fewer did;
- the calibration intercept and slope (`training.evaluation.calibration_fit`), ROC AUC with
  DeLong's interval (`training.comparison.delong_covariance`), the realised rate's Wilson interval;
- the approval rate at the decision threshold and the realised default rate among approved loans.

Every value is a plain float on `CohortPerformance`, named for export (MLflow metrics, gauges).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlstack.data.generator import DAYS_PER_MONTH
from mlstack.errors import StackError
from mlstack.training import model_input
from mlstack.training.comparison import delong_covariance
from mlstack.training.evaluation import calibration_fit

VERSION = "model_version"
TIMESTAMP = "event_timestamp"
OUTCOME_COLUMNS = (TIMESTAMP, VERSION, model_input.PREDICTION, model_input.LABEL)
Direction = Literal["calibrated", "under-predicts", "over-predicts", "not judged"]


class PerformanceError(StackError):
    """Performance cannot be assessed (bad outcomes frame, no data); the message says what is wrong."""


@dataclass(frozen=True)
class PerformanceRule:
    """How cohorts are formed and judged."""

    outcome_months: float = 12.0
    min_rows: int = 200
    confidence: float = 0.95
    threshold: float = 0.2  # the service's decision threshold: approve below it

    @property
    def outcome_window(self) -> timedelta:
        """How long after an application its outcome is known."""
        return timedelta(days=self.outcome_months * DAYS_PER_MONTH)


@dataclass(frozen=True)
class CohortPerformance:
    """One cohort (model version x application month) of matured applications: flat floats, export-ready."""

    model_version: str
    cohort: str  # application month, "YYYY-MM"
    applications: int
    defaults: int
    predicted_rate: float  # mean predicted default probability
    expected_low: float  # where the realised rate falls with `confidence` if the predictions are right
    expected_high: float
    realised_rate: float
    realised_low: float  # Wilson interval of the realised rate
    realised_high: float
    calibration_intercept: float  # 0 when calibrated in the large; > 0: too few defaults predicted
    calibration_slope: float  # 1 when calibrated; < 1 over-confident
    roc_auc: float
    roc_auc_low: float  # DeLong interval; NaN with fewer than two defaults or non-defaults
    roc_auc_high: float
    approval_rate: float  # share with prediction below the decision threshold
    approved_default_rate: float  # realised default rate among those (NaN if none approved)
    judged: bool  # at least `min_rows` applications
    direction: Direction

    @property
    def degraded(self) -> bool:
        """The realised default rate left the predicted interval."""
        return self.direction in ("under-predicts", "over-predicts")

    def metrics(self) -> dict[str, float]:
        """The cohort's numbers as a flat name -> float mapping (MLflow metrics; gauges labelled by version, cohort)."""
        values = asdict(self)
        for key in ("model_version", "cohort", "direction"):
            values.pop(key)
        return {key: float(value) for key, value in values.items()} | {"degraded": float(self.degraded)}


@dataclass(frozen=True)
class PerformanceReport:
    """Every cohort's performance as of `as_of`, and how many applications are still maturing or unattributed."""

    model_name: str
    as_of: datetime
    rule: PerformanceRule
    cohorts: tuple[CohortPerformance, ...]
    maturing: int  # served applications whose outcome window is still open
    unattributed: int  # matured applications no model version is known to have served

    @property
    def degraded(self) -> list[CohortPerformance]:
        """The judged cohorts whose realised default rate left the predicted interval."""
        return [c for c in self.cohorts if c.degraded]

    @property
    def degraded_versions(self) -> list[str]:
        """Model versions with at least one degraded cohort, in order of first appearance."""
        return list(dict.fromkeys(c.model_version for c in self.degraded))

    def summary(self) -> str:
        """One line for logs and the CLI."""
        judged = [c for c in self.cohorts if c.judged]
        head = f"{self.model_name} as of {self.as_of:%Y-%m-%d}: {len(judged)} cohort(s) judged"
        if not judged:
            return f"{head} (none with {self.rule.min_rows}+ matured applications; {self.maturing:,} maturing)"
        if not self.degraded:
            return f"{head}, realised default rates within the predicted intervals"
        shown = "; ".join(
            f"v{c.model_version} {c.cohort} {c.direction} (predicted {c.predicted_rate:.1%}, "
            f"realised {c.realised_rate:.1%})"
            for c in self.degraded[:3]
        )
        return f"{head}, DEGRADED: {shown}"

    def payload(self, version: str | None = None) -> dict[str, Any]:
        """JSON-ready dict (the event's payload): the report, the cohorts of `version` or all."""
        cohorts = [c for c in self.cohorts if version is None or c.model_version == version]
        return {
            "model_name": self.model_name,
            "as_of": self.as_of.isoformat(),
            "outcome_months": self.rule.outcome_months,
            "confidence": self.rule.confidence,
            "maturing": self.maturing,
            "unattributed": self.unattributed,
            "degraded_versions": self.degraded_versions,
            "cohorts": [asdict(c) | {"degraded": c.degraded} for c in cohorts],
        }


def assess_performance(
    outcomes: pd.DataFrame, *, model_name: str, as_of: datetime, rule: PerformanceRule
) -> PerformanceReport:
    """Judge every cohort of the matured rows of `outcomes` as of `as_of`.

    `outcomes` has one row per served application: `event_timestamp` (UTC, when it was scored),
    `model_version` (None or empty: not known), `default_probability` (what that version predicted)
    and `defaulted` (0/1, read only for matured rows).
    """
    absent = [name for name in OUTCOME_COLUMNS if name not in outcomes.columns]
    if absent:
        raise PerformanceError(f"the outcomes frame lacks column(s) {absent}")
    stamps = pd.to_datetime(outcomes[TIMESTAMP], utc=True)
    matured = (stamps + rule.outcome_window <= pd.Timestamp(as_of)).to_numpy()
    versions = outcomes[VERSION].astype("string").fillna("")
    known = (versions != "").to_numpy()
    frame = outcomes.loc[matured & known].assign(
        **{VERSION: versions[matured & known], "cohort": stamps[matured & known].dt.strftime("%Y-%m")}
    )
    cohorts = tuple(
        judge_cohort(str(version), str(cohort), group, rule)
        for (version, cohort), group in frame.groupby([VERSION, "cohort"], sort=True)
    )
    return PerformanceReport(
        model_name=model_name,
        as_of=as_of,
        rule=rule,
        cohorts=cohorts,
        maturing=int((~matured & known).sum()),
        unattributed=int((matured & ~known).sum()),
    )


def judge_cohort(version: str, cohort: str, rows: pd.DataFrame, rule: PerformanceRule) -> CohortPerformance:
    """One cohort's numbers and its verdict (`direction`)."""
    p = rows[model_input.PREDICTION].to_numpy(dtype=np.float64)
    y = rows[model_input.LABEL].to_numpy(dtype=np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise PerformanceError(f"column {model_input.LABEL!r} must hold 0/1 outcomes (cohort v{version} {cohort})")
    finite = np.isfinite(p)
    p, y = p[finite], y[finite]
    n = len(p)
    z = NormalDist().inv_cdf((1 + rule.confidence) / 2)
    predicted = float(p.mean()) if n else math.nan
    spread = z * math.sqrt(float(np.sum(p * (1 - p)))) / n if n else math.nan
    realised = float(y.mean()) if n else math.nan
    realised_low, realised_high = wilson(int(y.sum()), n, z)
    fit = calibration_fit(y, p) if n else None
    auc, auc_low, auc_high = roc_auc_interval(y, p, z)
    approved = p < rule.threshold
    judged = n >= rule.min_rows
    direction: Direction = "not judged"
    if judged:
        direction = (
            "under-predicts"
            if realised > predicted + spread
            else "over-predicts"
            if realised < predicted - spread
            else "calibrated"
        )
    return CohortPerformance(
        model_version=version,
        cohort=cohort,
        applications=n,
        defaults=int(y.sum()),
        predicted_rate=predicted,
        expected_low=predicted - spread,
        expected_high=predicted + spread,
        realised_rate=realised,
        realised_low=realised_low,
        realised_high=realised_high,
        calibration_intercept=fit.intercept if fit else math.nan,
        calibration_slope=fit.slope if fit else math.nan,
        roc_auc=auc,
        roc_auc_low=auc_low,
        roc_auc_high=auc_high,
        approval_rate=float(approved.mean()) if n else math.nan,
        approved_default_rate=float(y[approved].mean()) if approved.any() else math.nan,
        judged=judged,
        direction=direction,
    )


def wilson(successes: int, trials: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN, NaN without trials)."""
    if trials == 0:
        return math.nan, math.nan
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def roc_auc_interval(labels: np.ndarray, scores: np.ndarray, z: float) -> tuple[float, float, float]:
    """ROC AUC with DeLong's normal interval: (auc, low, high); NaN when either class has fewer than two rows."""
    positives = int(labels.sum())
    if positives < 2 or len(labels) - positives < 2:
        return math.nan, math.nan, math.nan
    aucs, covariance = delong_covariance(labels, scores[None, :])
    auc, se = float(aucs[0]), math.sqrt(max(float(covariance[0, 0]), 0.0))
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def performance_markdown(report: PerformanceReport) -> str:
    """A Markdown report: the summary line and one row per cohort."""
    lines = [
        f"# Performance on matured loans: {'DEGRADED' if report.degraded else 'ok'}",
        "",
        f"{report.summary()}. Outcome window {report.rule.outcome_months:g} months; intervals at "
        f"{report.rule.confidence:.0%}; {report.maturing:,} served application(s) still maturing, "
        f"{report.unattributed:,} matured without a known model version.",
        "",
    ]
    if not report.cohorts:
        return "\n".join([*lines, "No matured applications of a known model version yet."])
    lines += [
        "| version | cohort | applications | predicted (interval) | realised (Wilson) | slope | ROC AUC (DeLong) "
        "| approved | defaults among approved | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.cohorts:
        verdict = f"**{c.direction.upper()}**" if c.degraded else c.direction
        lines.append(
            f"| v{c.model_version} | {c.cohort} | {c.applications:,} | {c.predicted_rate:.1%} "
            f"({c.expected_low:.1%}-{c.expected_high:.1%}) | {c.realised_rate:.1%} "
            f"({c.realised_low:.1%}-{c.realised_high:.1%}) | {c.calibration_slope:.2f} | {c.roc_auc:.3f} "
            f"({c.roc_auc_low:.3f}-{c.roc_auc_high:.3f}) | {c.approval_rate:.1%} | {c.approved_default_rate:.1%} "
            f"| {verdict} |"
        )
    return "\n".join(lines)
