"""docker-compose.yml, run natively: its commands and environments as processes on loopback.

There is no Docker engine here, so the stack of the compose file is started by
tests/integration/compose_native.py, which takes every service's command, environment,
healthcheck and depends_on from the file and rewrites only host names, ports and container paths
(the module docstring lists every rule). Change a command in the compose file and this runs the new one.

The test's `.env`: .env.example with each empty (required) value filled by a random one, plus the
overrides below, which are the only values that differ from what a user's .env would give.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from mlstack.data.schema import CUSTOMER_PROFILE_FILE
from mlstack.features.online_store import make_client, parse_redis_url
from mlstack.settings import Settings
from tests.support import compose_native as native
from tests.support import prometheus
from tests.support.dashboards import dashboard_metric_names, panel_expression, pushed_metric_names

DRIFT_WINDOWS_START = datetime(2026, 1, 2, tzinfo=UTC)  # explicit bounds: nothing depends on today

# Beyond .env.example: a small synthetic population, so the bootstrap job takes seconds, not minutes.
OVERRIDES = {"MLSTACK_CUSTOMERS": "2000"}


def dotenv_for_test() -> dict[str, str]:
    """The test's stand-in for `.env`: .env.example, required values filled with random ones, OVERRIDES."""
    values = native.read_env_file()
    filled = {key: value or secrets.token_hex(16) for key, value in values.items()}
    filled["PREFECT_AUTH_STRING"] = f"admin:{secrets.token_hex(16)}"  # documented as user:password
    return {**filled, **OVERRIDES}


@pytest.fixture(scope="module")
def stack(postgres_url: str) -> Iterator[tuple[native.NativeStack, dict]]:
    """The compose stack up natively: Redis, MLflow, Prefect server and worker, bootstrap done, service ready."""
    if (native.REPO / ".env").exists():
        pytest.fail(
            "a .env in the repository would be read by the natively run services (pydantic-settings reads "
            "./.env); in the containers there is none. Move it away to run this test.",
            pytrace=False,
        )
    variables = dotenv_for_test()
    compose = native.load_compose(variables)
    root = Path(tempfile.mkdtemp(prefix="mlstack-compose-"))  # volumes, bind copies, homes, logs
    try:
        with native.NativeStack(compose, root, postgres_url) as running:
            running.up()  # a failure names the service and shows its log tail
            print(f"compose stack up natively:\n{running.timeline()}")  # shown with -s
            yield running, variables
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _known_application(running: native.NativeStack) -> dict:
    state = Path(running.service("bootstrap").env["MLSTACK_STATE_DIR"])
    profiles = pd.read_parquet(state / "data" / CUSTOMER_PROFILE_FILE, columns=["customer_id", "zipcode"])
    row = profiles.iloc[-1]
    return {
        "customer_id": int(row["customer_id"]),
        "zipcode": str(row["zipcode"]),
        "loan_amount": 12000.0,
        "loan_term_months": 36,
        "loan_purpose": "car",
    }


def test_service_scores_with_compose_token_after_native_bootstrap(stack):
    running, variables = stack
    assert running.done == {"bootstrap": 0}
    url = running.translation.url("service", 3000)
    application = _known_application(running)
    headers = {"authorization": f"Bearer {variables['SERVICE_API_TOKEN']}"}
    response = httpx.post(f"{url}/predict", json=application, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["default_probability"] <= 1.0
    assert body["decision"] in ("approve", "decline")
    assert body["model_version"] == "1"
    assert body["features_found"] is True, body


def test_service_rejects_scoring_without_compose_token(stack):
    running, _ = stack
    url = running.translation.url("service", 3000)
    response = httpx.post(f"{url}/predict", json=_known_application(running), timeout=30)
    assert response.status_code == 401


def test_mlflow_requires_basic_auth_and_holds_bootstrap_champion(stack):
    running, variables = stack
    url = running.translation.url("mlflow", 5000)
    endpoint = f"{url}/api/2.0/mlflow/registered-models/alias"
    params = {"name": "credit-risk", "alias": "champion"}
    assert httpx.get(endpoint, params=params, timeout=30).status_code == 401
    auth = (variables.get("MLFLOW_ADMIN_USERNAME") or "admin", variables["MLFLOW_ADMIN_PASSWORD"])
    response = httpx.get(endpoint, params=params, auth=auth, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"]["version"] == "1"


def test_prefect_server_requires_auth_string_and_recorded_bootstrap_flows(stack):
    running, variables = stack
    api = f"{running.translation.url('prefect-server', 4200)}/api"
    assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).status_code == 401
    token = base64.b64encode(variables["PREFECT_AUTH_STRING"].encode()).decode()
    headers = {"authorization": f"Basic {token}"}
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, headers=headers, timeout=30)
    assert runs.status_code == 200, runs.text
    flows = httpx.post(f"{api}/flows/filter", json={}, headers=headers, timeout=30).json()
    names = {flow["id"]: flow["name"] for flow in flows}
    completed = {names[run["flow_id"]] for run in runs.json() if run["state_type"] == "COMPLETED"}
    assert {"materialize-features", "train-model"} <= completed


def test_prefect_worker_polls_compose_work_pool(stack):
    running, variables = stack
    api = f"{running.translation.url('prefect-server', 4200)}/api"
    token = base64.b64encode(variables["PREFECT_AUTH_STRING"].encode()).decode()
    pool = variables.get("MLSTACK_WORK_POOL") or "mlstack-process"
    headers = {"authorization": f"Basic {token}"}
    response = httpx.get(f"{api}/work_pools/{pool}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "process"
    workers = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, headers=headers, timeout=30).json()
    assert any(worker["status"] == "ONLINE" for worker in workers), workers


def test_redis_refuses_clients_without_compose_password(stack):
    running, _ = stack
    target = parse_redis_url(running.service("bootstrap").env["MLSTACK_REDIS_URL"])  # what the stack's clients get
    with pytest.raises(redis.AuthenticationError):
        make_client(dataclasses.replace(target, password=None), Settings()).ping()
    assert make_client(target, Settings()).dbsize() > 0  # the bootstrap materialised features into it


def test_service_answers_503_while_redis_hangs_and_recovers_after(stack):
    running, variables = stack
    url = running.translation.url("service", 3000)
    headers = {"authorization": f"Bearer {variables['SERVICE_API_TOKEN']}"}
    application = _known_application(running)
    with running.frozen("redis"):  # what `docker compose pause redis` does to the container
        response = httpx.post(f"{url}/predict", json=application, headers=headers, timeout=30)
    assert response.status_code == 503, response.text
    assert response.json()["cause"] == "online_store_timeout"
    assert httpx.post(f"{url}/predict", json=application, headers=headers, timeout=30).status_code == 200


def test_service_metrics_serve_every_dashboard_metric_after_traffic(stack):
    running, variables = stack
    url = running.translation.url("service", 3000)
    headers = {"authorization": f"Bearer {variables['SERVICE_API_TOKEN']}"}
    assert (
        httpx.post(f"{url}/predict", json=_known_application(running), headers=headers, timeout=30).status_code == 200
    )
    exposed = httpx.get(f"{url}/metrics", timeout=30).text
    missing = {
        name
        for name in dashboard_metric_names() - pushed_metric_names()
        if not any(line.startswith(name) for line in exposed.splitlines())
    }
    # The errors panel has data once a request failed: the Redis hang of the test above.
    assert not missing, f"dashboard metrics not exported by the service: {sorted(missing)}"


def test_drift_panel_query_returns_series_after_a_monitor_run(stack):
    """The monitor, run as the worker runs it, pushes to the Pushgateway; the dashboard's PromQL then finds series."""
    running, _ = stack
    env = running.service("bootstrap").env  # the stack's client environment: MLflow, Redis, Feast, Pushgateway
    written = subprocess.run(
        [sys.executable, "-m", "tests.support.profile_windows", DRIFT_WINDOWS_START.isoformat()],
        env=env,
        cwd=native.REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert written.returncode == 0, written.stderr[-3000:]
    start, end = written.stdout.split()
    monitored = subprocess.run(
        [str(native.VENV_BIN / "mlstack"), "monitor", "--start", start, "--end", end],
        env=env,
        cwd=native.REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert monitored.returncode == 0, monitored.stdout[-3000:] + monitored.stderr[-3000:]
    assert "drift" in monitored.stdout
    prometheus_url = running.translation.url("prometheus", 9090)
    # The repository's 15s scrape interval: a few scrapes' worth of patience.
    series = prometheus.wait_for_series(prometheus_url, panel_expression("mlstack_drift_score"), timeout=90)
    features = {item["metric"]["feature"]: float(item["value"][1]) for item in series}
    assert features, "the drift panel's query returned no series"
    assert max(features, key=features.__getitem__) == "unemployment_rate", features
    assert features["unemployment_rate"] > 1.0  # past the threshold
    verdict = prometheus.query(prometheus_url, "mlstack_drift_verdict == 1")
    assert [item["metric"]["verdict"] for item in verdict] == ["drift"]
