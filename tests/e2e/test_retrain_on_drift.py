"""Drift event -> retraining, on a real `prefect server`, deployments from prefect.yaml and a process worker.

Ten `mlstack.drift.detected` events in a few seconds must produce exactly one run of the retraining
deployment (its trigger absorbs the burst), and that run must complete. The worker's settings make
the challenger a one-tree stump, so it is worse than the champion: the gate must refuse it, leaving
`@champion` and the running service (same process, same model version) as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mlstack.monitoring import steps as monitoring_steps
from mlstack.processes import free_port
from mlstack.settings import PROJECT_ROOT
from mlstack.simulation.demo import RETRAIN_DEPLOYMENT, deployment_runs, version_decision
from mlstack.stack import prefect as stack_prefect
from mlstack.stack.components import settings_environment
from mlstack.stack.service import running_service, start_service, stop_service
from mlstack.training import registry
from tests.support.serving_stack import build_serving_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORSE_CHALLENGER = {"MLSTACK_NUM_BOOST_ROUND": "1", "MLSTACK_NUM_LEAVES": "2"}
EMIT = """
import json, sys, time
from prefect.events import emit_event
resource = json.loads(sys.argv[1])
for i in range(10):
    emit_event(event="mlstack.drift.detected", resource=resource, payload={"burst": i})
    time.sleep(0.3)
"""


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    built = build_serving_stack(tmp_path_factory.mktemp("e2e"))
    settings = built.settings.model_copy(update={"prefect_port": free_port(), "mlflow_port": free_port()})
    service = None
    try:
        api_url = stack_prefect.start_prefect_server(settings)
        stack_prefect.ensure_work_pool(settings, api_url)
        deployments = stack_prefect.deploy_flows(settings, api_url)
        stack_prefect.start_worker(settings, api_url, extra_env={**built.environment(), **WORSE_CHALLENGER})
        service = start_service(settings, {**settings_environment(settings), **built.environment()})
        yield settings, api_url, deployments, service, built.known
    finally:
        stop_service(settings, timeout=10)
        stack_prefect.stop_worker(settings)
        stack_prefect.stop_prefect_server(settings)
        built.server.stop()


def test_prefect_yaml_deployments_are_registered(local_stack):
    _, _, deployments, _, _ = local_stack
    assert {
        "materialize-features/hourly",
        f"train-model/{RETRAIN_DEPLOYMENT}",
        "monitor-drift/every-15-minutes",
        "monitor-performance/daily",
    } <= set(deployments)


def test_drift_event_burst_starts_one_retrain_and_a_worse_challenger_changes_nothing(local_stack):
    settings, api_url, _, service, known = local_stack
    champion_before = registry.champion_version(settings).version
    since = datetime.now(UTC) - timedelta(seconds=1)
    resource = monitoring_steps.event_resource(settings, str(champion_before))
    env = {**os.environ, **settings_environment(settings), "PREFECT_API_URL": api_url}
    subprocess.run(
        [sys.executable, "-c", EMIT, json.dumps(resource)], env=env, cwd=PROJECT_ROOT, check=True, timeout=120
    )

    deadline = time.monotonic() + 480
    runs = []
    while time.monotonic() < deadline:
        runs = deployment_runs(api_url, RETRAIN_DEPLOYMENT, since)
        if runs and all(run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for run in runs):
            break
        time.sleep(3)
    time.sleep(10)  # a late duplicate would show up by now
    runs = deployment_runs(api_url, RETRAIN_DEPLOYMENT, since)
    assert len(runs) == 1, [(run["name"], run["state_type"]) for run in runs]
    assert runs[0]["state_type"] == "COMPLETED", runs[0]["state"]
    assert runs[0]["parameters"]["reason"] == "drift detected"

    newest = max(
        int(v.version) for v in registry.tracking(settings).search_model_versions(f"name='{settings.model_name}'")
    )
    assert newest == int(champion_before) + 1, "the retraining registered no challenger"
    assert version_decision(settings, str(newest))["promotion_outcome"] == "rejected"
    assert registry.champion_version(settings).version == champion_before

    still = running_service(settings)
    assert still is not None and still.pid == service.pid  # not restarted: nothing was promoted
    answer = httpx.post(f"{still.url}/predict", json=known, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == str(champion_before)
