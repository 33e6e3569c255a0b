"""The monitors' steps: drift (live profiles vs the champion's reference) and performance on matured loans.

`flows/monitor.py` and `flows/performance.py` sequence these; the events themselves are Prefect's,
so they are emitted there. Both events share the cooldown machinery (`_claim_event`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from mlstack.data import profiles
from mlstack.data.profiles import Profile
from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.errors import StackError
from mlstack.monitoring import drift, performance
from mlstack.monitoring.drift import DriftReport, DriftThresholds, GatheredProfiles
from mlstack.monitoring.live_profiles import stored_windows
from mlstack.monitoring.performance import PerformanceReport, PerformanceRule
from mlstack.settings import Settings
from mlstack.training import evaluation, model_input, registry
from mlstack.training.mlflow_ui import mlflow_ui

DRIFT_EVENT = "mlstack.drift.detected"
PERFORMANCE_EVENT = "mlstack.performance.degraded"
DRIFT_CHART = "drift.png"  # the chart's file name, logged at the root of the monitoring run


class MonitorError(StackError):
    """The monitor cannot run (no champion, no reference profile); the message says what is missing."""


def thresholds_of(settings: Settings) -> DriftThresholds:
    """The drift thresholds in force (settings `drift_*`)."""
    return DriftThresholds(
        alpha=settings.drift_alpha,
        context_min_effect=settings.drift_context_min_effect,
        numeric_min_effect=settings.drift_numeric_min_effect,
        min_rows=settings.drift_min_rows,
    )


def resolve_window(
    settings: Settings, start: datetime | None, end: datetime | None, lookback_minutes: float | None
) -> tuple[datetime, datetime]:
    """[start, end) in UTC: given bounds, else the last `lookback_minutes` (setting by default) before end/now."""
    end = (end or datetime.now(UTC)).astimezone(UTC)
    minutes = lookback_minutes if lookback_minutes is not None else settings.monitor_lookback_minutes
    start = start.astimezone(UTC) if start else end - timedelta(minutes=minutes)
    if start >= end:
        raise MonitorError(f"monitor window start {start.isoformat()} must be before end {end.isoformat()}")
    return start, end


def monitored_version(settings: Settings, model_version: str | None) -> str:
    """The version to monitor: the one given, else the current @champion."""
    if model_version:
        return str(model_version)
    champion = registry.champion_version(settings)
    if champion is None:
        raise MonitorError("there is no @champion to monitor yet: train one first (`mlstack train`)")
    return str(champion.version)


def load_reference(settings: Settings, version: str) -> Profile:
    """The training reference profile of `version`, from its MLflow run."""
    with tempfile.TemporaryDirectory(prefix="mlstack-reference-") as tmp:
        return profiles.read_profile(registry.download_reference_profile(settings, version, Path(tmp)))


def gather(settings: Settings, version: str, window: tuple[datetime, datetime]) -> GatheredProfiles:
    """Merged live-traffic profiles of `version` in the window, from the profile store."""
    return drift.gather_profiles(settings.profile_store_url(), version, *window)


def judge(
    settings: Settings, gathered: GatheredProfiles, reference: Profile, version: str, window: tuple
) -> DriftReport:
    """The drift report of the gathered window against the reference."""
    return drift.assess_drift(
        gathered,
        reference,
        model_name=settings.model_name,
        model_version=version,
        window=window,
        thresholds=thresholds_of(settings),
    )


@dataclass(frozen=True)
class RecordedDrift:
    """Where the report went: the MLflow monitoring run and the chart file (None when not judged)."""

    run_id: str
    chart: Path | None

    @property
    def chart_artifact(self) -> str | None:
        """The chart's path among the run's artifacts (logged at the root), None when there is none."""
        return None if self.chart is None else self.chart.name


def record(settings: Settings, report: DriftReport) -> RecordedDrift:
    """Log the scores (and the chart and table) to MLflow against the monitored version."""
    directory = settings.monitor_dir / report.window_end.strftime("%Y%m%dT%H%M%SZ")
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "drift.md"
    markdown.write_text(drift.drift_markdown(report))
    (directory / "drift.json").write_text(json.dumps(report.payload(), indent=2))
    chart = drift.plot_drift(report, directory / DRIFT_CHART) if report.verdict != "insufficient_data" else None
    metrics: dict[str, float] = {"rows": float(report.rows), "windows": float(report.windows)}
    for column in report.ranked():
        metrics[f"{column.algorithm}.{column.column}"] = column.score
        metrics[f"severity.{column.column}"] = column.severity
    metrics["drifted_features"] = float(len(report.drifted_features))
    tags = {"verdict": report.verdict, "window_end": report.window_end.isoformat(timespec="seconds")}
    files = [markdown, directory / "drift.json", *([chart] if chart else [])]
    run_id = registry.log_drift(settings, report.model_version, metrics, tags, files)
    return RecordedDrift(run_id, chart)


def chart_markdown(settings: Settings, report: DriftReport, recorded: RecordedDrift) -> str:
    """The chart artifact: the PNG from the MLflow server when one serves it (the Prefect UI shows it), else text bars.

    Below the image, a link to the run's page; the text fallback says where the PNG is.
    """
    ui = mlflow_ui(settings)
    title = f"{report.model_name} v{report.model_version}: {report.verdict.replace('_', ' ')}"
    if ui is not None and recorded.chart_artifact is not None:
        image = ui.artifact(recorded.run_id, recorded.chart_artifact)
        return "\n".join(
            [
                f"# Drift chart: {title}",
                "",
                # A plain image: Prefect's Markdown renders an image inside a link as text.
                f"![drift severity by column, 1.0 = threshold]({image})",
                "",
                f"Severity by column, 1.0 = threshold. MLflow run [{recorded.run_id}]({ui.run(recorded.run_id)}).",
            ]
        )
    where = f"`{recorded.chart_artifact}` of MLflow run `{recorded.run_id}` ({settings.tracking_uri()})"
    return "\n".join(
        [
            f"# Drift chart: {title}",
            "",
            drift.drift_chart_markdown(report),
            "",
            f"No MLflow server serves the store, so this is the chart as text; the PNG is {where}.",
        ]
    )


def claim_drift_event(settings: Settings, version: str, now: datetime | None = None) -> bool:
    """True if a drift event may be emitted for `version` now (and remember it); False within the cooldown.

    The first guard against a burst of retrains; the deployment trigger's own window is the second.
    """
    cooldown = timedelta(minutes=settings.drift_event_cooldown_minutes)
    return _claim_event(settings.monitor_dir / "drift_events.json", version, cooldown, now)


def claim_performance_event(settings: Settings, version: str, now: datetime | None = None) -> bool:
    """As `claim_drift_event`, for the performance-degraded event (its own record and cooldown)."""
    cooldown = timedelta(minutes=settings.performance_event_cooldown_minutes)
    return _claim_event(settings.monitor_dir / "performance_events.json", version, cooldown, now)


def _claim_event(path: Path, version: str, cooldown: timedelta, now: datetime | None) -> bool:
    """Record an event for `version` in `path` unless one was recorded less than `cooldown` before `now`."""
    now = now or datetime.now(UTC)
    try:
        emitted = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        emitted = {}
    last = datetime.fromisoformat(emitted[version]) if version in emitted else None
    if not drift.should_emit(last, now, cooldown):
        return False
    emitted[version] = now.isoformat()
    profiles.write_bytes_atomic(path, json.dumps(emitted, indent=2).encode())
    return True


def event_resource(settings: Settings, version: str) -> dict[str, str]:
    """The drift event's resource: names the model and version (what the retraining trigger matches)."""
    return {
        "prefect.resource.id": f"mlstack.model.{settings.model_name}.{version}",
        "prefect.resource.name": f"{settings.model_name} v{version}",
        "mlstack.model.name": settings.model_name,
        "mlstack.model.version": str(version),
    }


def performance_rule(settings: Settings) -> PerformanceRule:
    """How the performance monitor forms and judges cohorts (settings `performance_*`, `decision_threshold`)."""
    return PerformanceRule(
        outcome_months=settings.performance_outcome_months,
        min_rows=settings.performance_min_rows,
        confidence=settings.performance_confidence,
        threshold=settings.decision_threshold,
    )


def attribute_versions(timestamps: pd.Series, settings: Settings) -> pd.Series:
    """The model version that served each application, from the profile windows its send time falls in (None: none).

    The service profiles every request into a window of one model version, so a window's bounds say
    which version answered in it; a request in two overlapping windows (a version flip) is left None.
    """
    stamps = pd.to_datetime(timestamps, utc=True)
    versions = pd.Series(None, index=timestamps.index, dtype="object")
    hits = pd.Series(0, index=timestamps.index)
    for window in stored_windows(settings.profile_store_url()):
        start = pd.Timestamp(window.metadata["window_start"])
        end = pd.Timestamp(window.metadata["window_end"])
        inside = (stamps >= start) & (stamps < end)
        if inside.any():
            version = str(window.metadata["model_version"])
            conflict = inside & versions.notna() & (versions != version)
            versions[inside] = version
            hits[conflict] += 1
    return versions.where(hits == 0, None)


def served_outcomes(settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Served applications: send time, version, that version's point-in-time prediction (matured ones), outcome.

    The service does not log per-request predictions, so each matured application is scored again by
    the version that served it on its point-in-time features (the training set's join). Columns:
    application_id, event_timestamp, model_version, default_probability (NaN while maturing), defaulted.
    """
    from mlstack.features.store import get_store
    from mlstack.training.dataset import build_training_set

    path = settings.data_dir / LOAN_APPLICATIONS_FILE
    if not path.is_file():
        raise MonitorError(f"labelled applications not found at {path}: run `mlstack data generate` first")
    frame = pd.read_parquet(path, columns=["application_id", "event_timestamp", model_input.LABEL])
    frame["model_version"] = attribute_versions(frame["event_timestamp"], settings)
    frame = frame[frame["model_version"].notna()].reset_index(drop=True)
    frame[model_input.PREDICTION] = np.nan
    rule = performance_rule(settings)
    matured = pd.to_datetime(frame["event_timestamp"], utc=True) + rule.outcome_window <= pd.Timestamp(as_of)
    if matured.any():
        first = frame.loc[matured, "event_timestamp"].min().to_pydatetime()
        last = frame.loc[matured, "event_timestamp"].max().to_pydatetime()
        joined = build_training_set(settings, get_store(settings), first, last + timedelta(microseconds=1)).frame
        joined = joined.set_index("application_id")
        for version, rows in frame[matured].groupby("model_version"):
            ids = rows["application_id"]
            served = registry.load_booster(settings, str(version))  # booster + calibrator, as it was served
            predicted = evaluation.predict(served.booster, joined.loc[ids.to_numpy()], served.calibrator)
            frame.loc[ids.index, model_input.PREDICTION] = predicted
    return frame


def judge_performance(settings: Settings, outcomes: pd.DataFrame, as_of: datetime) -> PerformanceReport:
    """The performance report of the served outcomes as of `as_of`."""
    return performance.assess_performance(
        outcomes, model_name=settings.model_name, as_of=as_of, rule=performance_rule(settings)
    )


def record_performance(settings: Settings, report: PerformanceReport) -> list[str]:
    """Log each judged cohort's numbers as an MLflow run in the monitoring experiment; the run ids."""
    directory = settings.monitor_dir / f"performance-{report.as_of:%Y%m%dT%H%M%SZ}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "performance.md").write_text(performance.performance_markdown(report))
    (directory / "performance.json").write_text(json.dumps(report.payload(), indent=2, default=str))
    name = f"{settings.mlflow_experiment}-monitoring"  # where the drift runs go too (registry.log_drift)
    client = registry.tracking(settings.model_copy(update={"mlflow_experiment": name}))  # creates it if needed
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise MonitorError(f"MLflow experiment {name!r} could not be opened at {settings.tracking_uri()}")
    experiment_id = experiment.experiment_id
    run_ids = []
    for cohort in report.cohorts:
        tags = {
            "mlstack.model_name": settings.model_name,
            "mlstack.model_version": cohort.model_version,
            "mlstack.monitor": "performance",
            "cohort": cohort.cohort,
            "direction": cohort.direction,
            "as_of": report.as_of.isoformat(timespec="seconds"),
        }
        run = client.create_run(
            experiment_id, tags=tags, run_name=f"performance-v{cohort.model_version}-{cohort.cohort}"
        )
        stamp = int(report.as_of.timestamp() * 1000)
        metrics = [mlflow.entities.Metric(k, v, stamp, 0) for k, v in cohort.metrics().items() if np.isfinite(v)]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.log_artifact(run.info.run_id, str(directory / "performance.md"))
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)
    return run_ids
