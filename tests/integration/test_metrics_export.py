"""The flows' gauges through a real Pushgateway into a real Prometheus, queried with the dashboard's own PromQL.

Prometheus runs with the repository's scrape configuration (its `pushgateway` job, honor_labels) pointed
at the native gateway; the drift panel's expression is read from the Grafana dashboard, not restated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlstack.monitoring import export
from mlstack.processes import free_port
from mlstack.settings import Settings
from tests.support import prometheus
from tests.support.dashboards import panel_expression
from tests.support.reports import (
    INCOME,
    PURPOSE,
    UNEMPLOYMENT,
    better_challenger_decision,
    drift_report,
    unjudged_report,
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[prometheus.Server, prometheus.Server]]:
    root = tmp_path_factory.mktemp("prometheus")
    with prometheus.pushgateway(root) as gateway:
        address = gateway.url.removeprefix("http://")
        with prometheus.prometheus(root, prometheus.native_config({"pushgateway": address})) as server:
            yield gateway, server


@pytest.fixture
def settings(servers, tmp_path: Path) -> Settings:
    gateway, _ = servers
    return Settings(state_dir=tmp_path, pushgateway_url=gateway.url)


def test_drift_panel_query_returns_a_series_per_feature_after_a_push(servers, settings):
    _, server = servers
    report = drift_report((UNEMPLOYMENT, INCOME, PURPOSE))
    assert export.push_drift(settings, report) == "pushed"
    expression = panel_expression("mlstack_drift_score")
    series = prometheus.wait_for_series(server.url, expression)
    by_feature = {item["metric"]["feature"]: float(item["value"][1]) for item in series}
    assert by_feature == pytest.approx({column.column: column.severity for column in report.ranked()})
    verdict = prometheus.query(server.url, "mlstack_drift_verdict == 1")
    assert [(item["metric"]["verdict"], item["metric"]["job"], item["metric"]["model"]) for item in verdict] == [
        ("drift", export.MONITOR_JOB, "credit-risk")
    ]


def test_a_push_replaces_the_group_so_unscored_features_vanish(servers, settings):
    gateway, _ = servers
    assert export.push_drift(settings, drift_report((UNEMPLOYMENT, INCOME))) == "pushed"
    assert export.push_drift(settings, unjudged_report()) == "pushed"
    exposed = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    lines = [line for line in exposed.splitlines() if line.startswith("mlstack_drift")]
    assert not [line for line in lines if line.startswith("mlstack_drift_score")], lines
    assert any(line.startswith("mlstack_drift_verdict") and 'verdict="insufficient_data"' in line for line in lines)


def test_promotion_decision_reaches_prometheus_with_version_verdict_and_log_loss_difference(servers, settings):
    _, server = servers
    decision = better_challenger_decision(champion_version="2")
    assert export.push_promotion(settings, "3", decision, promoted=True) == "pushed"
    series = prometheus.wait_for_series(server.url, 'mlstack_promotion_log_loss_difference{bound="estimate"}')
    assert float(series[0]["value"][1]) == pytest.approx(decision.comparison.log_loss.estimate)
    assert series[0]["metric"]["job"] == export.TRAIN_JOB
    verdict = prometheus.query(server.url, "mlstack_promotion_verdict == 1")
    assert [(item["metric"]["verdict"], item["metric"]["version"]) for item in verdict] == [("promote", "3")]
    candidate = prometheus.query(server.url, "mlstack_promotion_candidate_version")
    assert float(candidate[0]["value"][1]) == 3.0


def test_push_to_an_unreachable_gateway_fails_softly_naming_the_url(caplog, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(state_dir=tmp_path, pushgateway_url=url)
    with caplog.at_level(logging.WARNING, logger=export.__name__):
        assert export.push_drift(settings, drift_report((UNEMPLOYMENT,))) == "failed"
    assert f"MLSTACK_PUSHGATEWAY_URL={url}" in caplog.text
