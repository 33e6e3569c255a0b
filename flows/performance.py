"""Flow `monitor-performance`: the model's realised default rates on matured loans -> artifacts, MLflow, event."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from mlstack.monitoring import performance
from mlstack.monitoring import steps as monitoring_steps
from mlstack.monitoring.performance import PerformanceReport
from mlstack.settings import get_settings

step = task(cache_policy=NO_CACHE)


@step
def served_outcomes(as_of: datetime) -> pd.DataFrame:
    return monitoring_steps.served_outcomes(get_settings(), as_of)


@step
def judge_performance(outcomes: pd.DataFrame, as_of: datetime) -> PerformanceReport:
    return monitoring_steps.judge_performance(get_settings(), outcomes, as_of)


@step
def record_in_mlflow(report: PerformanceReport) -> list[str]:
    return monitoring_steps.record_performance(get_settings(), report)


@step
def publish_artifacts(report: PerformanceReport) -> None:
    key = f"performance-{get_settings().model_name}".lower()
    markdown = performance.performance_markdown(report)
    create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=report.summary())
    if report.cohorts:
        table = [{"model_version": c.model_version, "cohort": c.cohort, **c.metrics()} for c in report.cohorts]
        create_table_artifact(key=f"{key}-cohorts", table=table, description=report.summary())


@step
def emit_performance_event(report: PerformanceReport, version: str) -> bool:
    settings = get_settings()
    if not monitoring_steps.claim_performance_event(settings, version):
        get_run_logger().info("performance event for v%s suppressed: one was emitted within the cooldown", version)
        return False
    emit_event(
        event=monitoring_steps.PERFORMANCE_EVENT,
        resource=monitoring_steps.event_resource(settings, version),
        payload=report.payload(version),
    )
    return True


@flow(name="monitor-performance")
def monitor_performance_flow(as_of: datetime | None = None) -> PerformanceReport:
    """Judge every cohort of served applications whose outcome window has closed by `as_of` (default: now).

    Parameters:
        as_of: the instant to judge at (UTC); outcomes are used only once MLSTACK_PERFORMANCE_OUTCOME_MONTHS
            have passed since the application.
    """
    logger = get_run_logger()
    moment = (as_of or datetime.now(UTC)).astimezone(UTC)
    outcomes = served_outcomes(moment)
    report = judge_performance(outcomes, moment)
    record_in_mlflow(report)
    publish_artifacts(report)
    logger.info(report.summary())
    for version in report.degraded_versions:
        emitted = emit_performance_event(report, version)
        logger.info("performance event for v%s %s", version, "emitted" if emitted else "suppressed (cooldown)")
    return report
