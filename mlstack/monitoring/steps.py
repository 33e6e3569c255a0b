"""The monitor's steps: gather live profiles, judge them against the champion's reference, record, de-duplicate.

`flows/monitor.py` sequences these; the drift event itself is Prefect's, so it is emitted there.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mlstack.data import profiles
from mlstack.errors import StackError
from mlstack.monitoring import drift
from mlstack.monitoring.drift import DriftReport, DriftThresholds, GatheredProfiles
from mlstack.settings import Settings
from mlstack.training import registry
from mlstack.training.mlflow_ui import mlflow_ui

if TYPE_CHECKING:
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

DRIFT_EVENT = "mlstack.drift.detected"
DRIFT_CHART = "drift.png"  # the chart's file name, logged at the root of the monitoring run


class MonitorError(StackError):
    """The monitor cannot run (no champion, no reference profile); the message says what is missing."""


def thresholds_of(settings: Settings) -> DriftThresholds:
    """The drift thresholds in force (settings `drift_*`)."""
    return DriftThresholds(
        hellinger=settings.drift_hellinger_threshold,
        chi2_alpha=settings.drift_chi2_alpha,
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


def load_reference(settings: Settings, version: str) -> DatasetProfileView:
    """The training reference profile of `version`, from its MLflow run."""
    with tempfile.TemporaryDirectory(prefix="mlstack-reference-") as tmp:
        return profiles.read_profile(registry.download_reference_profile(settings, version, Path(tmp)))


def gather(settings: Settings, version: str, window: tuple[datetime, datetime]) -> GatheredProfiles:
    """Merged live-traffic profiles of `version` in the window, from the profile store."""
    return drift.gather_profiles(settings.profile_store_url(), version, *window)


def judge(
    settings: Settings, gathered: GatheredProfiles, reference: DatasetProfileView, version: str, window: tuple
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


def _cooldown_file(settings: Settings) -> Path:
    return settings.monitor_dir / "drift_events.json"


def claim_drift_event(settings: Settings, version: str, now: datetime | None = None) -> bool:
    """True if a drift event may be emitted for `version` now (and remember it); False within the cooldown.

    The first guard against a burst of retrains; the deployment trigger's own window is the second.
    """
    now = now or datetime.now(UTC)
    path = _cooldown_file(settings)
    try:
        emitted = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        emitted = {}
    last = datetime.fromisoformat(emitted[version]) if version in emitted else None
    if not drift.should_emit(last, now, timedelta(minutes=settings.drift_event_cooldown_minutes)):
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
