"""The BentoML service over HTTP (`to_asgi()`), on real Redis, real Feast and a champion registered in MLflow."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mlstack.online_store import process_alive
from mlstack.settings import get_settings
from mlstack.traffic_profiles import count_profiled_rows
from tests.integration.serving_stack import GOOD, build_serving_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A servable stack and the service's ASGI app on it."""
    from starlette.testclient import TestClient

    stack = build_serving_stack(tmp_path_factory.mktemp("service"))
    env = stack.environment()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    from services.credit_risk import CreditRisk

    try:
        with TestClient(CreditRisk.to_asgi()) as client:
            yield client, stack
    finally:
        stack.server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def test_service_scores_a_known_customer(served):
    client, stack = served
    body = stack.known
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    prediction = response.json()
    assert 0.0 <= prediction["default_probability"] <= 1.0
    assert prediction["decision"] in ("approve", "decline")
    assert prediction["model_version"] == "1"
    assert prediction["features_found"] is True
    assert prediction["stalest_feature_age_seconds"] is not None


def test_service_answers_unknown_customer_without_error(served):
    client, _ = served
    response = client.post("/predict", json={**GOOD, "customer_id": 10**9})
    assert response.status_code == 200, response.text
    assert response.json()["features_found"] is False
    assert response.json()["missing_features"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loan_amount", -5),
        ("loan_amount", "lots"),
        ("loan_purpose", "yacht"),
        ("zipcode", "12"),
        ("loan_term_months", 48),
        ("customer_id", 0),
    ],
)
def test_service_rejects_bad_input_naming_the_field(served, field, value):
    client, _ = served
    response = client.post("/predict", json={**GOOD, field: value})
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text


def test_service_scores_a_batch_in_order(served):
    client, stack = served
    known = stack.known
    response = client.post("/predict_batch", json={"applications": [known, {**GOOD, "customer_id": 10**9}, known]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["features_found"] for p in predictions] == [True, False, True]
    assert predictions[0] == predictions[2]


def test_service_rejects_oversized_batch(served):
    client, _ = served
    response = client.post("/predict_batch", json={"applications": [GOOD] * 257})
    assert 400 <= response.status_code < 500


def test_service_answers_503_with_cause_when_redis_is_hung_and_recovers(served):
    client, stack = served
    body = stack.known
    pid = stack.server.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        response = client.post("/predict", json=body)
        assert response.status_code == 503, response.text
        assert response.json()["cause"] in ("online_store_timeout", "online_store_unavailable")
        assert client.get("/livez").status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client.post("/predict", json=body).status_code == 200  # recovers by itself


def test_runtime_close_flushes_profiles_with_every_scored_request(served):
    """The flush the service's shutdown hook calls (a second ASGI app cannot share this process's metrics)."""
    from mlstack.serving import ServingRuntime

    _, stack = served
    settings, known = stack.settings, stack.known
    before = count_profiled_rows(settings.profile_store_url())
    runtime = ServingRuntime.from_settings(settings)
    for i in range(7):
        runtime.predict([known if i % 2 else {**GOOD, "customer_id": 10**9}])
    runtime.predict([known, known])
    assert count_profiled_rows(settings.profile_store_url()) == before  # 1 h window: nothing written yet
    runtime.close()
    assert count_profiled_rows(settings.profile_store_url()) == before + 9  # every scored application


def test_service_refuses_oversized_body_with_413(served):
    client, stack = served
    response = client.post("/predict_batch", content=b"{" + b" " * stack.settings.service_max_body_bytes + b"}")
    assert response.status_code == 413
    assert response.json()["cause"] == "payload_too_large"


def test_service_answers_503_when_redis_is_killed_and_recovers_when_it_returns(served):
    """Last in this module: the restarted Redis may have lost unsaved features (answers still 200)."""
    client, stack = served
    pid = stack.server.pid()
    os.kill(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.05)
    started = time.monotonic()
    response = client.post("/predict", json=stack.known)
    assert response.status_code == 503, response.text
    assert response.json()["cause"] == "online_store_unavailable"
    assert time.monotonic() - started < 5  # connection refused is immediate; bounded, not a 15 s hang
    assert client.get("/livez").status_code == 200

    assert stack.server.ensure_running() == stack.target  # back on the same port, same password
    assert client.post("/predict", json=stack.known).status_code == 200  # no restart of the service needed
