"""Flow `monitor-drift`: live-traffic profiles vs the champion's training profile -> artifacts, MLflow, event."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from mlstack.data.profiles import Profile
from mlstack.monitoring import drift, export
from mlstack.monitoring import steps as monitoring_steps
from mlstack.monitoring.drift import DriftReport, GatheredProfiles
from mlstack.settings import get_settings

step = task(cache_policy=NO_CACHE)


@step
def resolve_window(
    start: datetime | None, end: datetime | None, lookback_minutes: float | None
) -> tuple[datetime, datetime]:
    return monitoring_steps.resolve_window(get_settings(), start, end, lookback_minutes)


@step
def monitored_version(model_version: str | None) -> str:
    return monitoring_steps.monitored_version(get_settings(), model_version)


@step
def load_reference(version: str) -> Profile:
    return monitoring_steps.load_reference(get_settings(), version)


@step
def gather_profiles(version: str, window: tuple[datetime, datetime]) -> GatheredProfiles:
    return monitoring_steps.gather(get_settings(), version, window)


@step
def judge_drift(
    gathered: GatheredProfiles, reference: Profile, version: str, window: tuple[datetime, datetime]
) -> DriftReport:
    return monitoring_steps.judge(get_settings(), gathered, reference, version, window)


@step
def record_in_mlflow(report: DriftReport) -> monitoring_steps.RecordedDrift:
    return monitoring_steps.record(get_settings(), report)


@step
def publish_artifacts(report: DriftReport, recorded: monitoring_steps.RecordedDrift) -> None:
    key = f"drift-{get_settings().model_name}".lower()
    create_markdown_artifact(key=f"{key}-report", markdown=drift.drift_markdown(report), description=report.summary())
    if report.verdict != "insufficient_data":
        table = [column.row() for column in report.ranked()]
        create_table_artifact(key=f"{key}-scores", table=table, description=report.summary())
    if recorded.chart is not None:
        create_markdown_artifact(
            key=f"{key}-chart", markdown=monitoring_steps.chart_markdown(get_settings(), report, recorded)
        )


@step
def push_metrics(report: DriftReport) -> export.PushOutcome:
    return export.push_drift(get_settings(), report)


@step
def emit_drift_event(report: DriftReport) -> bool:
    settings = get_settings()
    if not monitoring_steps.claim_drift_event(settings, report.model_version):
        get_run_logger().info(
            "drift event for v%s suppressed: one was emitted within the cooldown", report.model_version
        )
        return False
    emit_event(
        event=monitoring_steps.DRIFT_EVENT,
        resource=monitoring_steps.event_resource(settings, report.model_version),
        payload=report.payload(),
    )
    return True


@flow(name="monitor-drift")
def monitor_drift_flow(
    lookback_minutes: float | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    model_version: str | None = None,
) -> drift.DriftReport:
    """Judge drift of the live traffic in [start, end) against the model's training profile.

    Parameters:
        lookback_minutes: window length before `end` if `start` is not given (MLSTACK_MONITOR_LOOKBACK_MINUTES).
        start: first instant of the window (UTC).
        end: end of the window (default: now).
        model_version: the registered version whose traffic to judge (default: the current @champion).
    """
    logger = get_run_logger()
    window = resolve_window(start, end, lookback_minutes)
    version = monitored_version(model_version)
    reference = load_reference(version)
    gathered = gather_profiles(version, window)
    report = judge_drift(gathered, reference, version, window)
    recorded = record_in_mlflow(report)
    publish_artifacts(report, recorded)
    push_metrics(report)
    logger.info(report.summary())
    if report.verdict == "drift":
        emitted = emit_drift_event(report)
        logger.info("drift event %s", "emitted" if emitted else "suppressed (cooldown)")
    return report
