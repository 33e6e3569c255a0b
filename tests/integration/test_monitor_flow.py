"""The `monitor-drift` flow itself under Prefect's test harness: verdicts, Prefect artifacts, one drift event.

A real servable stack (own Redis, Feast, MLflow on sqlite, champion v1); live-traffic windows are
written into its profile store as the service's profiler writes them, at fixed instants, and the
flow is given explicit bounds, so nothing here depends on the date the test runs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from mlstack.monitoring import steps as monitoring_steps
from mlstack.settings import get_settings
from tests.support.profile_windows import scored_training_rows, write_windows
from tests.support.serving_stack import build_serving_stack

CLEAN_START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_START = datetime(2026, 1, 2, tzinfo=UTC)
EMPTY_START = datetime(2026, 1, 3, tzinfo=UTC)  # no window here: the flow must say "not judged"
LENGTH = timedelta(minutes=5)
WINDOWS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = build_serving_stack(tmp_path_factory.mktemp("monitor-flow"))
    try:
        yield stack
    finally:
        stack.server.stop()


@pytest.fixture
def flow_env(stack, tmp_path, monkeypatch):
    """The stack's settings for the flow's tasks (they read them from the environment), and a Prefect home."""
    for name, value in stack.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def run_monitor(bounds: list[tuple[datetime, datetime]]):
    """Run the flow over the span of `bounds`; (its report, its flow run id)."""
    from flows.monitor import monitor_drift_flow

    state = monitor_drift_flow(start=bounds[0][0], end=bounds[-1][1], return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id


def artifact_keys(client, flow_run_id) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return {artifact.key for artifact in artifacts}


def drift_events(client, deadline_seconds: float = 30, expected: int = 1) -> list:
    """The drift events the server has recorded, polled for a bounded time (events are persisted asynchronously)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    query = EventFilter(event=EventNameFilter(name=[monitoring_steps.DRIFT_EVENT]))
    deadline = time.monotonic() + deadline_seconds
    while True:
        events = client.read_events(filter=query, limit=50).events  # the server's maximum page
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


@pytest.mark.slow
def test_monitor_drift_flow_judges_windows_publishes_artifacts_and_emits_one_event(flow_env):
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    settings = flow_env
    version = monitoring_steps.monitored_version(settings, None)
    rows = scored_training_rows(settings)
    # Clean traffic: the training rows themselves, over three windows (merged, they are the reference).
    clean = write_windows(settings, version, np.array_split(rows, WINDOWS), CLEAN_START, LENGTH)
    # Drifted traffic: the same applicants in a recession (unemployment up by ten points).
    shifted = rows.assign(unemployment_rate=rows["unemployment_rate"] + 0.10)
    drifted = write_windows(settings, version, np.array_split(shifted, WINDOWS), DRIFT_START, LENGTH)
    key = f"drift-{settings.model_name}".lower()

    with prefect_test_harness(server_startup_timeout=120):
        clean_report, clean_run = run_monitor(clean)
        drift_report, drift_run = run_monitor(drifted)
        repeat_report, _ = run_monitor(drifted)  # within the cooldown: judged again, no second event
        empty_report, empty_run = run_monitor([(EMPTY_START, EMPTY_START + LENGTH)])
        with get_client(sync_client=True) as client:
            keys = {run: artifact_keys(client, run) for run in (clean_run, drift_run, empty_run)}
            events = drift_events(client)

    assert clean_report.verdict == "no_drift", clean_report.summary()
    assert (clean_report.rows, clean_report.windows) == (len(rows), WINDOWS)
    assert clean_report.model_version == version

    assert drift_report.verdict == "drift", drift_report.summary()
    assert drift_report.drifted_features[0] == "unemployment_rate", drift_report.drifted_features
    assert (drift_report.rows, drift_report.windows) == (len(rows), WINDOWS)
    assert repeat_report.verdict == "drift"

    assert empty_report.verdict == "insufficient_data"
    assert empty_report.rows == 0

    judged = {f"{key}-report", f"{key}-scores", f"{key}-chart"}
    assert keys[clean_run] == judged
    assert keys[drift_run] == judged
    assert keys[empty_run] == {f"{key}-report"}  # nothing scored: no table, no chart

    assert len(events) == 1, [event.occurred for event in events]
    assert events[0].resource["mlstack.model.version"] == version
    assert events[0].payload["verdict"] == "drift"
    assert "unemployment_rate" in events[0].payload["drifted_features"]
