"""The service as users run it: a real `bentoml serve` process on loopback, with auth on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlstack.settings import PROJECT_ROOT
from mlstack.traffic_profiles import count_profiled_rows
from tests.integration.serving_stack import GOOD, build_serving_stack

pytestmark = pytest.mark.integration
TOKEN = "serve-test-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "services.credit_risk:CreditRisk",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"bentoml serve exited:\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"service not ready in {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    state = tmp_path_factory.mktemp("serve")
    stack = build_serving_stack(state)
    env = {
        **os.environ,
        **stack.environment(),
        "MLSTACK_SERVICE_API_TOKEN": TOKEN,
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "1",
    }
    port, log = _free_port(), state / "serve.log"
    scored_before: list[int] = []  # 200s of earlier tests: their rows are in the same profile buffer
    proc = _start(env, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield url, proc, stack, log, scored_before
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stack.server.stop()


def test_serve_requires_token_and_scores_with_it(service):
    url, _, stack, _, scored_before = service
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


def test_serve_sigterm_answers_in_flight_requests_and_flushes_every_scored_one(service):
    url, proc, stack, log, scored_before = service
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
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) is not None
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses, "no request was answered before shutdown"
    assert all(status == 200 for status in statuses), sorted(set(statuses))
    scored = len(statuses) + len(scored_before)
    assert count_profiled_rows(stack.settings.profile_store_url()) - before == scored, log.read_text()[-3000:]
