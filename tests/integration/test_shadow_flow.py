"""A/B mode over HTTP, and the `evaluate-shadow` flow under Prefect's test harness, on one real stack (Redis, Feast,
MLflow on sqlite, champion v1 and challenger v2). The A/B test runs first: the flow test promotes v2.

Logged scores and their booked outcomes are simulated in 2024 with known default probabilities (the
challenger equal to the champion, then better); the flow runs as of 2025-06-01, when every one of them
has matured, so nothing depends on the date the test runs.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pytest

from mlstack.monitoring.shadow_log import ShadowLog, ShadowRecord, read_shadow_log
from mlstack.serving.shadow import assign_arm
from mlstack.settings import TELEMETRY_OFF, Settings, get_settings
from mlstack.simulation.traffic import append_applications, next_application_id
from mlstack.stack.service import start_service, stop_service
from mlstack.training import registry
from tests.support.serving_stack import GOOD, build_serving_stack, register_challenger
from tests.support.shadow_evidence import simulated

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = build_serving_stack(tmp_path_factory.mktemp("shadow-flow"))
    try:
        yield stack, register_challenger(stack.settings)
    finally:
        stack.server.stop()


@pytest.fixture
def flow_env(stack, tmp_path, monkeypatch):
    """The stack's settings for the flow's tasks (read from the environment), and a Prefect home."""
    for name, value in stack[0].environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    get_settings.cache_clear()
    yield get_settings(), stack[1]
    get_settings.cache_clear()


def test_ab_mode_over_http_lets_the_challenger_decide_for_its_sticky_share(stack):
    # A real `bentoml serve` in its own process: an in-process ASGI app would register BentoML's
    # Prometheus metrics a second time in a suite that built one already.
    built, challenger = stack
    env = {
        **built.environment(),
        **TELEMETRY_OFF,
        "MLSTACK_SHADOW_ENABLED": "true",
        "MLSTACK_AB_CHALLENGER_SHARE": "0.5",
    }
    customers = [1, *range(10**9, 10**9 + 30)]  # a known customer, and unknown ones (scored with missing features)
    service = start_service(built.settings, env)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            answers = {
                customer: [
                    client.post("/predict", json={**(built.known if customer == 1 else GOOD), "customer_id": customer})
                    for _ in range(2)
                ]
                for customer in customers
            }
    finally:
        stop_service(built.settings, timeout=30)  # SIGTERM: the shadow log is flushed and closed
    arms = {customer: assign_arm(customer, 0.5, f"ab-v{challenger}") for customer in customers}
    assert set(arms.values()) == {"champion", "challenger"}
    for customer, (first, again) in answers.items():
        assert first.status_code == again.status_code == 200, first.text
        assert first.json()["decided_by"] == again.json()["decided_by"] == arms[customer]  # sticky
        assert first.json()["model_version"] == (challenger if arms[customer] == "challenger" else "1")
    records = read_shadow_log(built.settings.shadow_dir).records
    assert len(records) == 2 * len(customers)
    assert dict(zip(records["customer_id"], records["decided_by"], strict=True)) == arms
    assert set(records["ab_share"]) == {0.5}


def log_and_book(settings: Settings, challenger: str, case: str, seed: int, first_customer: int) -> None:
    """Replace the shadow log with simulated scores of v1 vs `challenger`, and book their outcomes."""
    records, book = simulated(3000, seed, case)
    customers = np.arange(first_customer, first_customer + len(book))
    records["customer_id"], book["customer_id"] = customers, customers
    shutil.rmtree(settings.shadow_dir, ignore_errors=True)
    log = ShadowLog(settings.shadow_dir)
    log.append(
        [
            ShadowRecord(
                request_id=f"{case}-{i}",
                scored_at=row.scored_at.to_pydatetime(),
                customer_id=int(row.customer_id),
                zipcode=row.zipcode,
                loan_amount=row.loan_amount,
                loan_term_months=int(row.loan_term_months),
                loan_purpose=row.loan_purpose,
                feature_service="credit_risk_v1",
                model_name=settings.model_name,
                threshold=settings.decision_threshold,
                champion_version="1",
                champion_probability=float(row.champion_probability),
                champion_decision=row.champion_decision,
                challenger_version=challenger,
                challenger_probability=float(row.challenger_probability),
                challenger_decision="approve",
            )
            for i, row in enumerate(records.itertuples())
        ]
    )
    log.close()
    book["application_id"] = next_application_id(settings.data_dir) + np.arange(len(book))
    book["default_timestamp"] = pd.Series(pd.NaT, index=book.index, dtype="datetime64[us, UTC]").where(
        book["defaulted"] == 0, book["event_timestamp"] + pd.Timedelta(days=120)
    )
    append_applications(settings.data_dir, book)


def test_evaluate_shadow_flow_keeps_an_equal_challenger_and_promotes_a_better_one(flow_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.testing.utilities import prefect_test_harness

    from flows.shadow import evaluate_shadow_flow

    settings, challenger = flow_env
    key = f"shadow-{settings.model_name}".lower()
    with prefect_test_harness(server_startup_timeout=120):
        log_and_book(settings, challenger, "equal", seed=1, first_customer=10**8)
        equal = evaluate_shadow_flow(as_of=AS_OF, promote=True, return_state=True)
        assert equal.is_completed(), equal.message
        assert registry.alias_version(settings, registry.CHAMPION) == "1"
        log_and_book(settings, challenger, "better", seed=0, first_customer=2 * 10**8)
        better = evaluate_shadow_flow(as_of=AS_OF, promote=True, return_state=True)
        assert better.is_completed(), better.message
        with get_client(sync_client=True) as client:
            run_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[better.state_details.flow_run_id]))
            artifacts = {artifact.key: artifact for artifact in client.read_artifacts(artifact_filter=run_filter)}

    kept, promoted = equal.result(), better.result()
    assert kept.verdict == "not_better", kept.summary()
    assert (kept.records, kept.booked, kept.matured) == (3000, 3000, 3000)
    assert promoted.verdict == "promote", promoted.summary()
    assert promoted.compared == 3000 - promoted.declined
    assert registry.alias_version(settings, registry.CHAMPION) == challenger
    assert set(artifacts) == {f"{key}-report", f"{key}-metrics"}
    assert "reject inference" in artifacts[f"{key}-report"].data
    described = registry.describe(settings, challenger)
    assert described["last_shadow_verdict"] == "promote"
    assert described["promotion_outcome"] == "promoted"
    assert described["promotion_verdict"] == "promote"
    shadow_run = registry.tracking(settings).get_run(described["last_shadow_run_id"])
    assert shadow_run.data.metrics["shadow_compared"] == promoted.compared
    assert shadow_run.data.metrics["gate_diff_log_loss_upper"] < 0
