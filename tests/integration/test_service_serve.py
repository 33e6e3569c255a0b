"""The service as users run it: a real `bentoml serve` process on loopback, with auth on."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from mlstack.monitoring.live_profiles import count_profiled_rows
from mlstack.processes import process_alive
from mlstack.settings import TELEMETRY_OFF
from mlstack.stack.service import running_service, start_service
from tests.support.serving_stack import GOOD, background_service

TOKEN = "serve-test-token"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`mlstack serve`'s code path: bentoml serve in the background, waited for until ready."""
    env = {"MLSTACK_SERVICE_API_TOKEN": TOKEN}
    with background_service(tmp_path_factory.mktemp("serve"), env) as (started, stack):
        scored_before: list[int] = []  # 200s of earlier tests: their rows are in the same profile buffer
        yield started, stack, scored_before, {**stack.environment(), **TELEMETRY_OFF, **env}


def test_serve_is_reused_while_running(service):
    started, stack, _, env = service
    assert running_service(stack.settings) == started
    assert start_service(stack.settings, env) == started  # no second server


def test_serve_requires_token_and_scores_with_it(service):
    started, stack, scored_before, _ = service
    url = started.url
    assert httpx.post(f"{url}/predict", json=stack.known, timeout=10).status_code == 401
    response = httpx.post(f"{url}/predict", json=stack.known, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"
    scored_before.append(1)
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
    metrics = httpx.get(f"{url}/metrics", timeout=5)
    assert metrics.status_code == 200
    for name in (
        "mlstack_feature_fetch_seconds_count",
        "mlstack_feature_staleness_seconds_count",
        "mlstack_predictions_total{decision=",
        'mlstack_model_info{model_name="credit-risk",model_version="1"}',
    ):
        assert name in metrics.text, name


def test_serve_refuses_an_8_mib_header_with_431_json(service):
    """uvicorn's httptools parser has no header limit of its own: the 8 MiB header reached the app (200)."""
    started, stack, _, _ = service
    big = {"x-big": "x" * 8 * 2**20, "authorization": f"Bearer {TOKEN}"}
    for headers in (big, {f"x-h{i}": "v" for i in range(500)}):
        response = httpx.post(f"{started.url}/predict", json=stack.known, headers=headers, timeout=30)
        assert response.status_code == 431, response.text[:300]
        assert response.headers["content-type"] == "application/json"
        assert response.json()["cause"] == "request_header_fields_too_large"
    assert httpx.get(f"{started.url}/livez", timeout=5).status_code == 200


def test_serve_refuses_text_plain_json_and_wrong_methods_with_json_errors(service):
    started, stack, _, _ = service
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = json.dumps(stack.known)
    for content_type in ("text/plain", "text/plain; charset=utf-8"):
        response = httpx.post(
            f"{started.url}/predict", content=body, headers={**auth, "content-type": content_type}, timeout=10
        )
        assert response.status_code == 415, response.text
        assert response.json()["cause"] == "unsupported_media_type"
    response = httpx.get(f"{started.url}/predict", headers=auth, timeout=10)
    assert response.status_code == 405, response.text
    assert (response.headers["allow"], response.json()["cause"]) == ("POST", "method_not_allowed")
    strict = httpx.post(f"{started.url}/predict", json={**stack.known, "customer_id": True}, headers=auth, timeout=10)
    assert strict.status_code == 400, strict.text
    assert [issue["loc"] for issue in strict.json()["detail"]] == [["customer_id"]]


def test_serve_sigterm_answers_in_flight_requests_and_flushes_every_scored_one(service):
    started, stack, scored_before, _ = service
    url = started.url
    before = count_profiled_rows(stack.settings.profile_store_url())
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
            while not stop.is_set():
                body = stack.known if len(statuses) % 2 else {**GOOD, "customer_id": 10**9}
                try:
                    status = http.post(f"{url}/predict", json=body).status_code
                except httpx.TransportError:
                    return  # the server stopped accepting: not an answered request
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    os.kill(started.pid, signal.SIGTERM)  # what `mlstack down` sends (to the group)
    deadline = time.monotonic() + 60
    while process_alive(started.pid):
        assert time.monotonic() < deadline, "bentoml serve did not stop within 60 s of SIGTERM"
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses, "no request was answered before shutdown"
    assert all(status == 200 for status in statuses), sorted(set(statuses))
    scored = len(statuses) + len(scored_before)
    assert count_profiled_rows(stack.settings.profile_store_url()) - before == scored, started.log.read_text()[-3000:]
