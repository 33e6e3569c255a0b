"""The monitor's steps: gather live profiles, judge them against the champion's reference, record, de-duplicate.

`flows/monitor.py` sequences these; the drift event itself is Prefect's, so it is emitted there.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from mlstack.data import profiles
from mlstack.data.profiles import Profile
from mlstack.errors import StackError
from mlstack.monitoring import drift
from mlstack.monitoring.drift import DriftReport, DriftThresholds, GatheredProfiles
from mlstack.settings import Settings
from mlstack.training import registry

DRIFT_EVENT = "mlstack.drift.detected"


class MonitorError(StackError):
    """The monitor cannot run (no champion, no reference profile); the message says what is missing."""


def thresholds_of(settings: Settings) -> DriftThresholds:
    """The drift thresholds in force (settings `drift_*`)."""
    return DriftThresholds(
        alpha=settings.drift_alpha,
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


def record(settings: Settings, report: DriftReport) -> RecordedDrift:
    """Log the scores (and the chart and table) to MLflow against the monitored version."""
    directory = settings.monitor_dir / report.window_end.strftime("%Y%m%dT%H%M%SZ")
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "drift.md"
    markdown.write_text(drift.drift_markdown(report))
    (directory / "drift.json").write_text(json.dumps(report.payload(), indent=2))
    chart = drift.plot_drift(report, directory / "drift.png") if report.verdict != "insufficient_data" else None
    metrics: dict[str, float] = {"rows": float(report.rows), "windows": float(report.windows)}
    for column in report.ranked():
        metrics[f"{column.algorithm}.{column.column}"] = column.score
        metrics[f"severity.{column.column}"] = column.severity
    metrics["drifted_features"] = float(len(report.drifted_features))
    tags = {"verdict": report.verdict, "window_end": report.window_end.isoformat(timespec="seconds")}
    files = [markdown, directory / "drift.json", *([chart] if chart else [])]
    run_id = registry.log_drift(settings, report.model_version, metrics, tags, files)
    return RecordedDrift(run_id, chart)


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
