"""MLflow registry events into Prefect: a hand-set @champion becomes `mlstack.model.promoted`, once.

Real parts: `mlflow server` on PostgreSQL with the stack's webhook variables (http and 127.0.0.1
allowed), the stack's webhook receiver as its own process (`python -m flows.champion`), a Prefect
server (test harness), and aliases set by hand through `MlflowClient` as the MLflow UI does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from mlflow import MlflowClient

from mlstack.settings import get_settings
from mlstack.stack import registry_events
from mlstack.stack.components import settings_environment
from mlstack.training import registry
from mlstack.training.champion_history import tenures
from tests.support.factories import make_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(mlflow_server, tmp_path, monkeypatch):
    """Settings on the module's MLflow server with a model of three versions, exported for flows and the receiver."""
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(
        tmp_path / "state",
        mlflow_tracking_uri=mlflow_server,
        model_name=f"credit-risk-{suffix}",
        mlflow_experiment=f"credit-risk-{suffix}",
    )
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    get_settings.cache_clear()
    client = registry.tracking(settings)
    client.create_registered_model(settings.model_name)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    for _ in range(3):
        run = client.create_run(experiment.experiment_id)
        client.create_model_version(settings.model_name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    yield settings
    get_settings.cache_clear()


def promoted_events(client, expected: int, deadline_seconds: float = 60) -> list:
    """The `mlstack.model.promoted` events on the server, polled for a bounded time (persisted asynchronously)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + deadline_seconds
    while True:
        # Built each time: a filter's default time window ends at the moment it is built.
        query = EventFilter(event=EventNameFilter(name=[registry_events.PROMOTED_EVENT]))
        events = client.read_events(filter=query, limit=50).events
        if len(events) >= expected or time.monotonic() > deadline:
            return sorted(events, key=lambda event: event.occurred)
        time.sleep(0.5)


def wait_for_moves(settings, count: int, deadline_seconds: float = 60) -> list:
    """The recorded champion moves once there are `count` (webhook delivery is asynchronous)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        moves = registry.champion_moves(settings)
        if len(moves) >= count or time.monotonic() > deadline:
            return moves
        time.sleep(0.25)


def signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers as MLflow signs a delivery (mlflow.webhooks.delivery)."""
    delivery, sent = str(uuid.uuid4()), str(timestamp if timestamp is not None else int(time.time()))
    digest = hmac.new(secret.encode(), f"{delivery}.{sent}.".encode() + body, hashlib.sha256).digest()
    return {
        "X-MLflow-Signature": f"v1,{base64.b64encode(digest).decode()}",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": sent,
        "content-type": "application/json",
    }


def test_hand_set_champion_reaches_prefect_by_webhook_then_by_poll_when_webhooks_are_off(settings, mlflow_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.champion import watch_champion_flow

    name = settings.model_name
    hand = MlflowClient(mlflow_server, mlflow_server)  # what the MLflow UI calls
    with prefect_test_harness(server_startup_timeout=120):
        receiver = registry_events.start_webhook_receiver(settings, PREFECT_API_URL.value(), mlflow_server, 120)
        try:
            hand.set_registered_model_alias(name, "champion", "1")  # the first champion seen: the baseline
            assert [move.version for move in wait_for_moves(settings, 1)] == ["1"]
            hand.set_registered_model_alias(name, "challenger", "3")  # another alias: ignored
            hand.set_registered_model_alias(name, "champion", "2")  # a promotion by hand
            with get_client(sync_client=True) as client:
                by_webhook = promoted_events(client, expected=1)
            moves = registry.champion_moves(settings)

            secret = registry_events.webhook_secret(settings)
            url = f"{receiver.url}{registry_events.WEBHOOK_PATH}"
            body = json.dumps(
                {
                    "entity": "model_version_alias",
                    "action": "created",
                    "data": {"name": name, "alias": "champion", "version": "3"},
                }
            ).encode()
            forged = httpx.post(url, content=body, headers=signed("not-the-secret", body), timeout=10)
            unsigned = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
            replayed = httpx.post(url, content=body, headers=signed(secret, body, int(time.time()) - 3600), timeout=10)
            altered = signed(secret, body)
            tampered = httpx.post(url, content=body.replace(b'"3"', b'"1"'), headers=altered, timeout=10)
        finally:
            registry_events.stop_webhook_receiver(settings)

        # Webhooks off (no receiver): a hand move is seen by the poll, announced once.
        hand.set_registered_model_alias(name, "champion", "3")
        first_poll = watch_champion_flow()
        second_poll = watch_champion_flow()
        with get_client(sync_client=True) as client:
            events = promoted_events(client, expected=2)

    assert [e.payload["version"] for e in by_webhook] == ["2"]
    assert [(m.version, m.previous, m.kind, m.seen_by) for m in moves] == [
        ("1", None, "external", "webhook"),
        ("2", "1", "external", "webhook"),
    ]
    for response in (forged, unsigned, replayed, tampered):
        assert response.status_code == 401, response.text
    assert "unsigned" in unsigned.json()["error"]
    assert "does not match" in forged.json()["error"] and "does not match" in tampered.json()["error"]
    assert "away" in replayed.json()["error"]

    assert (first_poll, second_poll) == ("3", None)
    assert [(e.payload["version"], e.payload["seen_by"]) for e in events] == [("2", "webhook"), ("3", "poll")]
    assert events[0].resource["mlstack.model.version"] == "2"
    assert events[0].payload["previous"] == "1"

    held = tenures(registry.champion_moves(settings))
    assert [(t.version, t.move.seen_by, t.end is None) for t in held] == [
        ("1", "webhook", False),
        ("2", "webhook", False),
        ("3", "poll", True),
    ]
    assert registry.champion_history(settings) == ["1", "2"]  # a rollback from the hand-set v3 returns to v2

    shown = subprocess.run(
        [sys.executable, "-m", "mlstack", "model", "history"],
        env={**os.environ, **settings_environment(settings), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    rows = [line for line in shown.stdout.splitlines() if line.startswith("│ v")]
    assert [row.split("│")[1].strip() for row in rows] == ["v1", "v2", "v3"], shown.stdout
    assert "external from v2" in rows[2] and "poll" in rows[2] and "now" in rows[2]
