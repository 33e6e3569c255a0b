"""The BentoML service over HTTP (`to_asgi()`), on real Redis, real Feast and a champion registered in MLflow."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlstack.monitoring.live_profiles import count_profiled_rows
from mlstack.processes import process_alive
from mlstack.settings import get_settings
from tests.support.serving_stack import GOOD, build_serving_stack


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A servable stack and the service's ASGI app on it."""
    from starlette.testclient import TestClient

    stack = build_serving_stack(tmp_path_factory.mktemp("service"))
    # The whole environment is saved: the service's start-up exports the stack's library environment
    # (PREFECT_HOME, BENTOML_HOME, ...) into this process too, and later tests must not inherit it.
    saved = dict(os.environ)
    os.environ.update(stack.environment())
    get_settings.cache_clear()
    from services.credit_risk import CreditRisk

    try:
        with TestClient(CreditRisk.to_asgi()) as client:
            yield client, stack
    finally:
        stack.server.stop()
        os.environ.clear()
        os.environ.update(saved)
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


@pytest.mark.parametrize(
    ("field", "value"),
    [("customer_id", True), ("customer_id", "1"), ("loan_amount", "12000"), ("loan_term_months", 36.0)],
)
def test_service_refuses_coerced_types_with_400_naming_the_field(served, field, value):
    """Issue 15: `"customer_id": true` was scored as customer 1; no JSON type is coerced into another."""
    client, stack = served
    for path, body, loc in (
        ("/predict", {**stack.known, field: value}, [field]),
        ("/predict_batch", {"applications": [stack.known, {**stack.known, field: value}]}, ["applications", 1, field]),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert [issue["loc"] for issue in response.json()["detail"]] == [loc]
        assert response.json()["error"]


def test_service_takes_an_integer_loan_amount(served):
    client, stack = served
    as_float = client.post("/predict", json={**stack.known, "loan_amount": 12000.0})
    as_int = client.post("/predict", json={**stack.known, "loan_amount": 12000})
    assert as_int.status_code == 200, as_int.text
    same = ("default_probability", "decision", "features_found", "missing_features")
    assert {key: as_int.json()[key] for key in same} == {key: as_float.json()[key] for key in same}


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", None])
def test_service_scores_only_json_labelled_bodies(served, content_type):
    """A JSON body labelled text/plain (or not at all) is what a page on any origin sends without a preflight."""
    client, stack = served
    headers = {"content-type": content_type} if content_type else {}
    for path, body in (("/predict", stack.known), ("/predict_batch", {"applications": [stack.known]})):
        response = client.post(path, content=json.dumps(body), headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["cause"] == "unsupported_media_type"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_service_answers_a_wrong_method_with_json_405(served, method):
    client, _ = served
    for path in ("/predict", "/predict_batch"):
        response = client.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.json()["cause"] == "method_not_allowed"


def test_service_refuses_an_8_mib_header_with_431(served):
    client, stack = served
    for path in ("/predict", "/livez"):
        response = client.post(path, json=stack.known, headers={"x-big": "x" * 8 * 2**20})
        assert response.status_code == 431, response.text[:200]
        assert response.json()["cause"] == "request_header_fields_too_large"
    assert client.post("/predict", json=stack.known).status_code == 200


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
    from mlstack.serving.runtime import ServingRuntime

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
    body = b"{" + b" " * stack.settings.service_max_body_bytes + b"}"
    response = client.post("/predict_batch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["cause"] == "payload_too_large"


@pytest.mark.timeout(10, func_only=True)  # connection refused is immediate; bounded, not a 15 s hang
def test_service_answers_503_when_redis_is_killed_and_recovers_when_it_returns(served):
    """Last in this module: the restarted Redis may have lost unsaved features (answers still 200)."""
    client, stack = served
    pid = stack.server.pid()
    os.kill(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.05)
    response = client.post("/predict", json=stack.known)
    assert response.status_code == 503, response.text
    assert response.json()["cause"] == "online_store_unavailable"
    assert client.get("/livez").status_code == 200

    assert stack.server.ensure_running() == stack.target  # back on the same port, same password
    assert client.post("/predict", json=stack.known).status_code == 200  # no restart of the service needed


def test_concurrent_requests_get_the_answers_they_get_alone(served):
    """Requests scored together (adaptive batching) get exactly what each gets on its own, in order."""
    client, stack = served
    bodies = [
        {**stack.known, "loan_amount": 1_000.0 + 5_000 * i, "loan_term_months": (36, 60)[i % 2]} for i in range(12)
    ] + [{**GOOD, "customer_id": 10**9 + i} for i in range(4)]
    alone = [client.post("/predict", json=body).json() for body in bodies]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        together = list(pool.map(lambda body: client.post("/predict", json=body), bodies * 3))
    assert all(response.status_code == 200 for response in together), {r.status_code for r in together}
    for expected, response in zip(alone * 3, together, strict=True):
        got = response.json()
        assert got["default_probability"] == expected["default_probability"]
        assert (got["features_found"], got["missing_features"]) == (
            expected["features_found"],
            expected["missing_features"],
        )


def _batcher_with_gate(predict):
    """A RequestBatcher whose first predict call waits for `gate`: later requests pile up behind it."""
    from mlstack.serving.runtime import RequestBatcher

    calls: list[int] = []
    gate = asyncio.Event()

    async def gated(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            await gate.wait()
        return await predict(rows)

    return RequestBatcher(gated), calls, gate


async def _submit_behind_a_running_batch(make_batcher, first, later):
    batcher, calls, gate = make_batcher()
    first_task = asyncio.create_task(batcher.submit(first))
    while not calls:  # the first batch is running, held by the gate
        await asyncio.sleep(0.001)
    later_tasks = [asyncio.create_task(batcher.submit(rows)) for rows in later]
    await asyncio.sleep(0.01)
    gate.set()
    return await asyncio.gather(first_task, *later_tasks, return_exceptions=True), calls


def test_batcher_scores_waiting_requests_in_one_call_in_order(served):
    from mlstack.serving.runtime import ServingRuntime

    _, stack = served
    runtime = ServingRuntime.from_settings(stack.settings, profile=False)
    known, unknown = stack.known, {**GOOD, "customer_id": 10**9}
    later = [[unknown], [{**known, "loan_amount": 90_000.0}], [known, unknown], [known]]
    results, calls = asyncio.run(
        _submit_behind_a_running_batch(lambda: _batcher_with_gate(runtime.predict_async), [known], later)
    )
    assert calls == [1, 5]  # everything that waited went into one Feast read and one Booster call
    for rows, predictions in zip([[known], *later], results, strict=True):
        alone = runtime.predict(rows)  # the synchronous path, one request at a time
        assert [p.default_probability for p in predictions] == [p.default_probability for p in alone]
        assert [p.features_found for p in predictions] == [p.features_found for p in alone]
