"""Traffic -> live profiles -> drift verdicts, through a real `bentoml serve`, real Redis and MLflow's reference."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from mlstack.data import generator
from mlstack.monitoring import steps as monitoring_steps
from mlstack.simulation.traffic import run_traffic
from mlstack.stack.service import start_service, stop_service
from tests.support.profile_windows import scored_training_rows, write_windows
from tests.support.serving_stack import build_serving_stack

WINDOW_SECONDS = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    stack = build_serving_stack(tmp_path_factory.mktemp("drift"), customers=2000)
    env = {**stack.environment(), "MLSTACK_PROFILE_WINDOW_SECONDS": str(WINDOW_SECONDS)}
    try:
        yield stack, start_service(stack.settings, env)
    finally:
        stop_service(stack.settings, timeout=10)
        stack.server.stop()


def traffic_then_judge(stack, service, scenario: str):
    run = run_traffic(stack.settings, scenario, url=service.url, rate=60, duration=timedelta(seconds=6), seed=5)
    time.sleep(WINDOW_SECONDS + 2.5)  # the service closes a window once the clock passes its end
    window = (run.started - timedelta(seconds=1), datetime.now(UTC))
    version = monitoring_steps.monitored_version(stack.settings, None)
    reference = monitoring_steps.load_reference(stack.settings, version)
    gathered = monitoring_steps.gather(stack.settings, version, window)
    return run, monitoring_steps.judge(stack.settings, gathered, reference, version, window)


def test_monitor_clean_windows_of_the_training_distribution_rarely_alarm(served, tmp_path):
    stack, _ = served
    settings = stack.settings.model_copy(update={"profile_store": str(tmp_path / "profiles")})
    version = monitoring_steps.monitored_version(settings, None)
    rows = scored_training_rows(settings)
    samples = [rows.sample(300, random_state=i) for i in range(20)]
    windows = write_windows(settings, version, samples, datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=5))
    reference = monitoring_steps.load_reference(settings, version)
    reports = [
        monitoring_steps.judge(settings, monitoring_steps.gather(settings, version, w), reference, version, w)
        for w in windows
    ]
    assert [r.rows for r in reports] == [300] * 20
    alarms = [r.summary() for r in reports if r.verdict == "drift"]
    assert len(alarms) <= 1, alarms


def test_monitor_normal_traffic_is_not_drift_and_outcomes_are_written(served):
    stack, service = served
    before = len(
        pd.read_parquet(stack.settings.data_dir / generator.LOAN_APPLICATIONS_FILE, columns=["application_id"])
    )
    run, report = traffic_then_judge(stack, service, "normal")
    assert run.result.ok == run.result.sent > 300
    assert report.rows == run.result.ok
    assert report.verdict == "no_drift", report.summary()
    after = pd.read_parquet(stack.settings.data_dir / generator.LOAN_APPLICATIONS_FILE)
    assert len(after) == before + run.labelled == before + run.result.ok
    assert after["application_id"].is_unique
    assert (after.tail(run.labelled)["event_timestamp"] >= pd.Timestamp(run.started)).all()


def test_monitor_recession_traffic_is_drift_led_by_unemployment(served):
    stack, service = served
    run, report = traffic_then_judge(stack, service, "recession")
    assert run.snapshots_written[generator.ZIPCODE_STATS_FILE] > 0
    assert report.verdict == "drift", report.summary()
    assert "unemployment_rate" in report.drifted_features[:3], report.drifted_features
    assert run.default_rate > 0.15  # the same features mean more risk in the recession regime
