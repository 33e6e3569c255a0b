"""`mlstack traffic` and `mlstack monitor`: live traffic in a scenario, and drift of it against training."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render
from mlstack.simulation.scenarios import ScenarioName

if TYPE_CHECKING:
    from mlstack.monitoring.drift import DriftReport


def traffic(
    scenario: Annotated[
        ScenarioName, typer.Option(help="normal: as in training; recession: features drift, risk rises.")
    ] = "normal",
    rate: Annotated[float, typer.Option(min=0.1, help="Applications per second.")] = 40.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of traffic.")] = 30.0,
    url: Annotated[str | None, typer.Option(help="Service URL (default: the running local service).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: from the clock).")] = None,
) -> None:
    """Send loan applications to the service in a scenario, then write their outcomes into the offline data."""
    settings = context.settings()
    from mlstack.serving.client import service_token
    from mlstack.simulation.traffic import TrafficError, get_scenario, run_traffic
    from mlstack.stack.service import running_service

    chosen = get_scenario(scenario)
    if url is None:
        service = running_service(settings)
        if service is None:
            raise TrafficError("no local service is running: start one with `mlstack serve` or pass --url")
        url = service.url
    with render.traffic_progress(chosen, url) as progress:
        run = run_traffic(
            settings,
            scenario,
            url=url,
            rate=rate,
            duration=timedelta(seconds=duration),
            seed=seed,
            token=service_token(settings),
            progress=progress,
        )
    render.traffic_sent(run)


def monitor(
    lookback_minutes: Annotated[float | None, typer.Option(help="Window before now (default from settings).")] = None,
    start: Annotated[datetime | None, typer.Option(help="Window start (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Window end (UTC, default now).")] = None,
) -> None:
    """Run the monitor-drift flow: live profiles vs the champion's training profile; emits the drift event."""
    settings = context.settings()
    report = run_monitor(lookback_minutes, context.utc(start), context.utc(end))
    from mlstack.monitoring.steps import DRIFT_CHART
    from mlstack.training.mlflow_ui import last_drift_run, run_artifact_page

    run_id = last_drift_run(settings, report.model_version) if report.verdict != "insufficient_data" else None
    render.drift(report, run_artifact_page(settings, run_id, DRIFT_CHART) if run_id else None)


def run_monitor(
    lookback_minutes: float | None = None, start: datetime | None = None, end: datetime | None = None
) -> DriftReport:
    """Run the flow `monitor-drift` in this process (call after `context.settings()`)."""
    from flows.monitor import monitor_drift_flow

    return monitor_drift_flow(lookback_minutes=lookback_minutes, start=start, end=end)
