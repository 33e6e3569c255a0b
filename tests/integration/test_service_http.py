"""The BentoML service over HTTP (`to_asgi()`), on real Redis, real Feast and a champion registered in MLflow."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest

from mlstack import trainer
from mlstack.data import generate_data
from mlstack.features import BATCH_VIEWS, apply_features, get_store, materialize_view
from mlstack.online_store import EmbeddedRedis
from mlstack.settings import Settings, get_settings
from mlstack.traffic_profiles import count_profiled_rows
from tests.conftest import _url, make_settings

pytestmark = pytest.mark.integration

GOOD = {"customer_id": 1, "zipcode": "00000", "loan_amount": 12000.0, "loan_term_months": 36, "loan_purpose": "car"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Data ending today, materialised into a Redis of this module's own, a champion, and the ASGI app."""
    from starlette.testclient import TestClient

    state = tmp_path_factory.mktemp("service")
    server = EmbeddedRedis(state / "redis", Settings())  # own server: the test stops it
    target = server.ensure_running()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    settings = make_settings(state / "state", target, data_end=today.date(), profile_window_seconds=3600)
    generate_data(settings.data_dir, customers=1500, months=18, end=today, seed=21)
    store = get_store(settings, target)
    apply_features(store, settings.feature_repo)
    for view in BATCH_VIEWS:
        materialize_view(store, view, datetime.now(UTC))
    assert trainer.run_training(settings, progress=lambda _: None).promoted
    customer = int(
        store.get_online_features(features=["customer_profile:age"], entity_rows=[{"customer_id": 1}]).to_dict()[
            "customer_id"
        ][0]
    )
    env = {
        "MLSTACK_STATE_DIR": str(settings.state_dir),
        "MLSTACK_REDIS_URL": _url(target),
        "MLSTACK_DATA_END": today.date().isoformat(),
        "MLSTACK_PROFILE_WINDOW_SECONDS": "3600",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    from services.credit_risk import CreditRisk

    try:
        with TestClient(CreditRisk.to_asgi()) as client:
            yield client, settings, server, customer
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def _zipcode(settings: Settings, customer_id: int) -> str:
    import pandas as pd

    profile = pd.read_parquet(
        settings.data_dir / "customer_profile.parquet", filters=[("customer_id", "==", customer_id)]
    )
    return str(profile.sort_values("event_timestamp")["zipcode"].iloc[-1])


def test_service_scores_a_known_customer(served):
    client, settings, _, customer = served
    body = {**GOOD, "customer_id": customer, "zipcode": _zipcode(settings, customer)}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    prediction = response.json()
    assert 0.0 <= prediction["default_probability"] <= 1.0
    assert prediction["decision"] in ("approve", "decline")
    assert prediction["model_version"] == "1"
    assert prediction["features_found"] is True
    assert prediction["stalest_feature_age_seconds"] is not None


def test_service_answers_unknown_customer_without_error(served):
    client, *_ = served
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
    client, *_ = served
    response = client.post("/predict", json={**GOOD, field: value})
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text


def test_service_scores_a_batch_in_order(served):
    client, settings, _, customer = served
    known = {**GOOD, "customer_id": customer, "zipcode": _zipcode(settings, customer)}
    response = client.post("/predict_batch", json={"applications": [known, {**GOOD, "customer_id": 10**9}, known]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["features_found"] for p in predictions] == [True, False, True]
    assert predictions[0] == predictions[2]


def test_service_rejects_oversized_batch(served):
    client, *_ = served
    response = client.post("/predict_batch", json={"applications": [GOOD] * 257})
    assert 400 <= response.status_code < 500


def test_service_answers_503_with_cause_when_redis_is_hung_and_recovers(served):
    client, settings, server, customer = served
    body = {**GOOD, "customer_id": customer, "zipcode": _zipcode(settings, customer)}
    pid = server.pid()
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

    _, settings, _, customer = served
    before = count_profiled_rows(settings.profile_store_url())
    known = {**GOOD, "customer_id": customer, "zipcode": _zipcode(settings, customer)}
    runtime = ServingRuntime.from_settings(settings)
    for i in range(7):
        runtime.predict([known if i % 2 else {**GOOD, "customer_id": 10**9}])
    runtime.predict([known, known])
    assert count_profiled_rows(settings.profile_store_url()) == before  # 1 h window: nothing written yet
    runtime.close()
    assert count_profiled_rows(settings.profile_store_url()) == before + 9  # every scored application


def test_service_refuses_oversized_body_with_413(served):
    client, settings, *_ = served
    response = client.post("/predict_batch", content=b"{" + b" " * settings.service_max_body_bytes + b"}")
    assert response.status_code == 413
    assert response.json()["cause"] == "payload_too_large"
