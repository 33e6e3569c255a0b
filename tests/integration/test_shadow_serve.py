"""Shadow mode in a real `bentoml serve`: champion v1 decides, challenger v2 is scored off the response path,
both scores of every answered request are in the shadow log, none lost on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from mlstack.monitoring.shadow_log import read_shadow_log
from mlstack.processes import process_alive
from mlstack.settings import TELEMETRY_OFF
from mlstack.stack.service import start_service, stop_service
from tests.support.serving_stack import GOOD, build_serving_stack, register_challenger


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory):
    """A servable stack with champion v1 and challenger v2, and `bentoml serve` on it with shadow mode on."""
    stack = build_serving_stack(tmp_path_factory.mktemp("shadow-serve"))
    try:
        challenger = register_challenger(stack.settings)
        env = {**stack.environment(), **TELEMETRY_OFF, "MLSTACK_SHADOW_ENABLED": "true"}
        yield start_service(stack.settings, env), stack, challenger
    finally:
        stop_service(stack.settings, timeout=10)
        stack.server.stop()


def test_shadow_logs_both_scores_of_every_answered_request_and_loses_none_on_sigterm(shadowed):
    started, stack, challenger = shadowed
    url = started.url
    answers: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            sent = 0
            while not stop.is_set():
                unknown = {**GOOD, "customer_id": 10**9 + worker}
                body = stack.known if sent % 2 else unknown
                sent += 1
                try:
                    response = http.post(f"{url}/predict", json=body)
                except httpx.TransportError:
                    return  # the server stopped accepting: not an answered request
                with lock:
                    answers.append({"status": response.status_code, **(response.json() if response.is_success else {})})

    with httpx.Client(timeout=30) as http:  # /predict_batch is shadowed too: one record per application
        batch = http.post(f"{url}/predict_batch", json={"applications": [stack.known, GOOD, stack.known]})
        assert batch.status_code == 200, batch.text
        answers.extend({"status": 200, **prediction} for prediction in batch.json()["predictions"])
    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(4)]
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

    log_tail = started.log.read_text()[-3000:]
    assert answers, "no request was answered before shutdown"
    assert all(answer["status"] == 200 for answer in answers), Counter(answer["status"] for answer in answers)
    assert {answer["model_version"] for answer in answers} == {"1"}, "the champion must decide"
    contents = read_shadow_log(stack.settings.shadow_dir)
    records = contents.records
    assert contents.torn_lines == 0
    assert len(records) == len(answers), log_tail
    assert set(records["champion_version"]) == {"1"}
    assert set(records["challenger_version"]) == {challenger}
    assert set(records["feature_service"]) == {"credit_risk_v1"}
    assert records["request_id"].is_unique
    # Every answer's probability is the champion's logged one; the challenger (another model) scored differently.
    assert Counter(records["champion_probability"].round(12)) == Counter(
        round(answer["default_probability"], 12) for answer in answers
    )
    assert (records["challenger_probability"] != records["champion_probability"]).any()
    assert records["challenger_probability"].between(0, 1).all()
