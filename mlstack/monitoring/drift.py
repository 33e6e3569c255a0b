"""Drift of live traffic against the champion's training profile, scored from whylogs profiles.

Per column, with whylogs' drift algorithms:
- numeric columns (distribution sketches): Hellinger distance between the two histograms, in
  [0, 1]. whylogs' own categories: below 0.15 no drift, 0.15-0.4 possible drift, 0.4 and above
  drift. A distance, not a p-value, so a large window does not turn trivial differences into alarms.
  Possible drift is reported but does not trip the verdict: slow macro movements (e.g. this month's
  regional unemployment against an 18-month training mix) land there.
- categorical columns (frequent items): chi-square test; possible drift below p = 0.05, drift below
  `chi2_alpha` (0.001: ~20 columns are tested at once, a Bonferroni-style guard against one of them
  failing by chance).
Each score is also expressed as a `severity`: 1.0 at the threshold, so one chart shows all columns.
The model output (`default_probability`) is scored the same way, as the prediction drift.

A window is judged only with at least `min_rows` rows; fewer gives the verdict `insufficient_data`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlstack.data import profiles
from mlstack.errors import StackError
from mlstack.monitoring.live_profiles import stored_windows
from mlstack.training import model_input
from mlstack.training.model_input import PREDICTION

if TYPE_CHECKING:
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

# Coarse histograms on purpose: zipcode-level features take only as many distinct values in a window
# as there are zipcodes in it, and at whylogs' default 30 buckets that lumpiness alone read as drift
# (normal traffic: regional_default_rate 0.42 at 30 buckets, 0.25 at 10; a recession: 0.73 at 10).
HELLINGER_BUCKETS = 10
Verdict = Literal["drift", "no_drift", "insufficient_data"]


class DriftError(StackError):
    """Drift could not be assessed (no reference, unreadable profiles); the message says which."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a column counts as drifted."""

    hellinger: float = 0.4
    hellinger_possible: float = 0.15
    chi2_alpha: float = 0.001
    chi2_possible: float = 0.05
    min_rows: int = 200


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift: the algorithm, its score, the threshold and the verdict."""

    column: str
    kind: Literal["numeric", "categorical"]
    algorithm: Literal["hellinger", "chi-square"]
    score: float  # Hellinger distance, or chi-square p-value
    threshold: float
    drifted: bool
    possible: bool = False  # in whylogs' "possible drift" band: reported, not acted on

    @property
    def verdict(self) -> str:
        """`DRIFT`, `possible` or `ok`: what tables show."""
        return "DRIFT" if self.drifted else "possible" if self.possible else "ok"

    def row(self) -> dict[str, Any]:
        """The column as a table row (the Prefect table artifact and the CLI use it)."""
        return {
            "column": self.column,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "score": round(self.score, 6),
            "threshold": self.threshold,
            "severity": round(self.severity, 3),
            "verdict": self.verdict,
        }

    @property
    def severity(self) -> float:
        """1.0 at the threshold, above 1 drifted: comparable across algorithms (for charts and ranking)."""
        if self.algorithm == "hellinger":
            return self.score / self.threshold
        return math.log(max(self.score, 1e-300)) / math.log(self.threshold)


@dataclass(frozen=True)
class DriftReport:
    """The verdict for one window of live traffic against one model version's training profile."""

    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    rows: int
    windows: int
    min_rows: int
    verdict: Verdict
    features: tuple[ColumnDrift, ...] = ()
    prediction: ColumnDrift | None = None
    missing_columns: tuple[str, ...] = field(default=())

    @property
    def drifted_features(self) -> list[str]:
        """Names of the drifted model inputs, most severe first."""
        return [c.column for c in sorted(self.features, key=lambda c: -c.severity) if c.drifted]

    def ranked(self) -> list[ColumnDrift]:
        """Every scored column (features, then the prediction) by severity, most severe first."""
        columns = [*self.features, *([self.prediction] if self.prediction else [])]
        return sorted(columns, key=lambda c: -c.severity)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        head = f"{self.model_name} v{self.model_version}, {self.rows:,} rows in {self.windows} window(s)"
        if self.verdict == "insufficient_data":
            return f"{head}: not judged, fewer than {self.min_rows:,} rows"
        if self.verdict == "no_drift":
            return f"{head}: no drift"
        shown = ", ".join(self.drifted_features[:5]) or "none"
        prediction = " and the prediction" if self.prediction and self.prediction.drifted else ""
        return f"{head}: DRIFT in {len(self.drifted_features)} feature(s) ({shown}){prediction}"

    def payload(self) -> dict[str, Any]:
        """JSON-ready dict: the verdict, the window and every column's score (the drift event's payload)."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "verdict": self.verdict,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "rows": self.rows,
            "windows": self.windows,
            "drifted_features": self.drifted_features,
            "prediction_drifted": bool(self.prediction and self.prediction.drifted),
            "scores": {c.column: {**asdict(c), "severity": round(c.severity, 4)} for c in self.ranked()},
        }


@dataclass(frozen=True)
class GatheredProfiles:
    """The merged profile of the windows found, how many, and their total rows (None view: none found)."""

    view: DatasetProfileView | None
    windows: int
    rows: int


def gather_profiles(store_url: str | Path, model_version: str, start: datetime, end: datetime) -> GatheredProfiles:
    """Merge every complete window of `model_version` that overlaps [start, end) (sidecar = complete)."""
    merged, windows, rows = None, 0, 0
    for window in stored_windows(store_url, model_version):
        if not window.overlaps(start, end):
            continue
        view = profiles.deserialize_profile(window.read_bytes(), window.profile_path)
        merged = view if merged is None else merged.merge(view)
        windows += 1
        rows += window.rows
    return GatheredProfiles(merged, windows, rows)


def score_columns(
    current: DatasetProfileView, reference: DatasetProfileView, columns: Iterable[str], thresholds: DriftThresholds
) -> tuple[list[ColumnDrift], list[str]]:
    """Score each of `columns` present in both profiles; returns (scores, columns missing from either)."""
    profiles._whylogs()
    from whylogs.viz.drift.column_drift_algorithms import ChiSquare, Hellinger
    from whylogs.viz.drift.configs import HellingerConfig

    hellinger = Hellinger(HellingerConfig(max_hist_buckets=HELLINGER_BUCKETS))

    current_columns, reference_columns = current.get_columns(), reference.get_columns()
    scores, missing = [], []
    for name in columns:
        if name not in current_columns or name not in reference_columns:
            missing.append(name)
            continue
        target, base = current_columns[name], reference_columns[name]
        result = None
        if name not in model_input.CATEGORICAL and _has_distribution(target) and _has_distribution(base):
            result = hellinger.calculate(target, base)
            if result is not None:
                distance = float(result.statistic)
                drifted = distance >= thresholds.hellinger
                possible = not drifted and distance >= thresholds.hellinger_possible
                scores.append(
                    ColumnDrift(name, "numeric", "hellinger", distance, thresholds.hellinger, drifted, possible)
                )
                continue
        result = ChiSquare().calculate(target, base)
        if result is None:
            missing.append(name)
            continue
        pvalue = float(result.pvalue)
        drifted = pvalue < thresholds.chi2_alpha
        possible = not drifted and pvalue < thresholds.chi2_possible
        scores.append(ColumnDrift(name, "categorical", "chi-square", pvalue, thresholds.chi2_alpha, drifted, possible))
    return scores, missing


def _has_distribution(column: Any) -> bool:
    metric = column.get_metric("distribution")
    return metric is not None and not metric.kll.value.is_empty()


def assess_drift(
    gathered: GatheredProfiles,
    reference: DatasetProfileView,
    *,
    model_name: str,
    model_version: str,
    window: tuple[datetime, datetime],
    thresholds: DriftThresholds,
    columns: Sequence[str] = model_input.PROFILE_COLUMNS,
) -> DriftReport:
    """The report for a gathered window: insufficient data, no drift, or drift (any column scored).

    `columns` are scored; the one named `PREDICTION`, if among them, is reported as the prediction drift.
    """
    base: dict[str, Any] = dict(
        model_name=model_name,
        model_version=model_version,
        window_start=window[0],
        window_end=window[1],
        rows=gathered.rows,
        windows=gathered.windows,
        min_rows=thresholds.min_rows,
    )
    if gathered.view is None or gathered.rows < thresholds.min_rows:
        return DriftReport(**base, verdict="insufficient_data")
    scored, missing = score_columns(gathered.view, reference, columns, thresholds)
    prediction = next((c for c in scored if c.column == PREDICTION), None)
    feature_scores = tuple(c for c in scored if c.column != PREDICTION)
    drifted = any(c.drifted for c in feature_scores) or bool(prediction and prediction.drifted)
    return DriftReport(
        **base,
        verdict="drift" if drifted else "no_drift",
        features=feature_scores,
        prediction=prediction,
        missing_columns=tuple(missing),
    )


def drift_markdown(report: DriftReport) -> str:
    """A Markdown report: the verdict line, then one table row per column, most severe first."""
    lines = [
        f"# Drift: {report.verdict.replace('_', ' ')}",
        "",
        f"{report.summary()}. Window {report.window_start:%Y-%m-%d %H:%M} → {report.window_end:%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if report.verdict == "insufficient_data":
        lines.append(f"Only {report.rows:,} rows; at least {report.min_rows:,} are needed to judge drift.")
        return "\n".join(lines)
    lines += ["| column | kind | algorithm | score | threshold | severity | verdict |", "|---|---|---|---|---|---|---|"]
    for c in report.ranked():
        name = f"{c.column} (prediction)" if c.column == PREDICTION else c.column
        verdict = "**DRIFT**" if c.drifted else c.verdict
        lines.append(
            f"| {name} | {c.kind} | {c.algorithm} | {c.score:.4g} | {c.threshold:g} | {c.severity:.2f} | {verdict} |"
        )
    if report.missing_columns:
        lines += ["", f"Not scored (absent from a profile): {', '.join(report.missing_columns)}."]
    lines += [
        "",
        "Severity is 1.0 at the threshold: Hellinger distance ÷ threshold, or log p ÷ log alpha for chi-square.",
        "",
        drift_chart_markdown(report),
    ]
    return "\n".join(lines)


def plot_drift(report: DriftReport, path: Path) -> Path:
    """A horizontal bar chart of every column's severity with the threshold at 1.0; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(reversed(report.ranked()))
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(columns) + 1.4))
    colours = ["#d62728" if c.drifted else "#1f77b4" for c in columns]
    axes.barh([c.column for c in columns], [min(c.severity, 10.0) for c in columns], color=colours)
    axes.axvline(1.0, color="black", linestyle="--", linewidth=1, label="threshold")
    axes.set_xlabel("drift severity (1.0 = threshold; capped at 10)")
    axes.set_title(
        f"{report.model_name} v{report.model_version}: {report.verdict.replace('_', ' ')} ({report.rows:,} rows)"
    )
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def drift_chart_markdown(report: DriftReport) -> str:
    """The same chart as text bars (Prefect's UI shows Markdown artifacts, not images): 10 blocks = threshold."""
    lines = ["```", f"{'column':<26} severity: 10 blocks = threshold"]
    for c in report.ranked():
        bar = "█" * min(round(c.severity * 10), 50)
        lines.append(f"{c.column[:25]:<26} {c.severity:6.2f} {bar}{'  DRIFT' if c.drifted else ''}")
    lines.append("```")
    return "\n".join(lines)


def should_emit(last_emitted: datetime | None, now: datetime, cooldown: timedelta) -> bool:
    """Emit a drift event unless one was emitted for the same model version less than `cooldown` ago."""
    return last_emitted is None or now - last_emitted >= cooldown
