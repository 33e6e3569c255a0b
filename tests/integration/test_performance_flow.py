"""The `monitor-performance` flow on a real stack: matured applications re-scored by the version that served them.

A real servable stack (own Redis, Feast + DuckDB, MLflow, champion v1). The profile store gets one
window of v1 over the last 90 days of the generated applications (as if the service had answered
them); the flow runs "13 months later" (an explicit `as_of`), so every outcome has matured.
"""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlstack.data.schema import LOAN_APPLICATIONS_FILE, LOAN_APPLICATIONS_SCHEMA
from mlstack.monitoring import steps as monitoring_steps
from mlstack.settings import get_settings
from mlstack.training import evaluation, model_input, registry
from mlstack.training import steps as training_steps
from tests.support.profile_windows import write_windows
from tests.support.serving_stack import build_serving_stack

SERVED_DAYS = 90


def write(frame: pd.DataFrame, path) -> None:
    """Replace the labelled applications with `frame`, in their schema."""
    pq.write_table(pa.Table.from_pandas(frame, schema=LOAN_APPLICATIONS_SCHEMA, preserve_index=False), path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = build_serving_stack(tmp_path_factory.mktemp("performance-flow"))
    try:
        yield stack
    finally:
        stack.server.stop()


@pytest.fixture
def flow_env(stack, tmp_path, monkeypatch):
    """The stack's settings in the environment (cohorts of 50+ applications judged), and a Prefect home."""
    for name, value in stack.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLSTACK_PERFORMANCE_MIN_ROWS", "50")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def performance_events(client, expected: int, deadline_seconds: float = 30) -> list:
    """The performance events the server has recorded, polled for a bounded time (persisted asynchronously)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    query = EventFilter(event=EventNameFilter(name=[monitoring_steps.PERFORMANCE_EVENT]))
    deadline = time.monotonic() + deadline_seconds
    while True:
        events = client.read_events(filter=query, limit=50).events
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


@pytest.mark.slow
def test_monitor_performance_flow_rescores_matured_cohorts_and_emits_one_event(flow_env):
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.performance import monitor_performance_flow

    settings = flow_env
    end = settings.data_end_datetime()
    served_from = end - timedelta(days=SERVED_DAYS)
    write_windows(settings, "1", [pd.DataFrame({"bureau_score": [700.0]})], served_from, timedelta(days=SERVED_DAYS))
    as_of = end + timedelta(days=400)
    path = settings.data_dir / LOAN_APPLICATIONS_FILE
    applications = pd.read_parquet(path)
    served = applications[applications["event_timestamp"] >= pd.Timestamp(served_from)]

    # What the flow must reproduce: v1's predictions ("booster + calibrator", as served) on the
    # point-in-time rows of the served applications.
    v1 = registry.load_booster(settings, "1")
    assert not v1.calibrator.is_identity  # every run calibrates: the calibrator must be part of the answer
    joined = training_steps.load_training_set(settings, served_from, end).frame.set_index("application_id")
    expected = evaluation.predict(v1.booster, joined.loc[served["application_id"].to_numpy()], v1.calibrator)

    with prefect_test_harness(server_startup_timeout=120):
        before = monitor_performance_flow(as_of=end)  # nothing has matured yet
        report = monitor_performance_flow(as_of=as_of)
        # A harsher world: a third of the served loans that did not default now did (labels rewritten).
        worse = applications.copy()
        flip = worse["event_timestamp"].ge(pd.Timestamp(served_from)) & (worse["application_id"] % 3 == 0)
        worse.loc[flip, model_input.LABEL] = 1
        write(worse, path)
        degraded = monitor_performance_flow(as_of=as_of)
        repeated = monitor_performance_flow(as_of=as_of)  # within the cooldown: judged again, no second event
        with get_client(sync_client=True) as client:
            events = performance_events(client, expected=1)
    write(applications, path)

    assert before.cohorts == () and before.maturing == len(served)
    assert {c.model_version for c in report.cohorts} == {"1"}
    assert sum(c.applications for c in report.cohorts) == len(served)
    assert sum(c.defaults for c in report.cohorts) == int(served[model_input.LABEL].sum())
    weighted = sum(c.predicted_rate * c.applications for c in report.cohorts) / len(served)
    assert weighted == pytest.approx(float(np.mean(expected)))
    assert all(c.judged and np.isfinite(c.roc_auc) for c in report.cohorts if c.applications >= 50)

    assert degraded.degraded_versions == ["1"], degraded.summary()
    assert all(c.direction == "under-predicts" for c in degraded.cohorts if c.judged)
    assert repeated.degraded_versions == ["1"]
    assert len(events) == 1, [event.occurred for event in events]
    assert events[0].resource["mlstack.model.version"] == "1"
    assert events[0].payload["degraded_versions"] == ["1"]

    client = registry.tracking(settings)
    experiment = client.get_experiment_by_name(f"{settings.mlflow_experiment}-monitoring")
    runs = client.search_runs([experiment.experiment_id], "tags.`mlstack.monitor` = 'performance'")
    assert len(runs) == 3 * len(report.cohorts)  # nothing was judged in the first run
    assert {"predicted_rate", "realised_rate", "roc_auc", "approval_rate"} <= set(runs[0].data.metrics)
