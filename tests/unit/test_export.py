"""Gauges of the batch flows' results (mlstack.monitoring.export): names, labels and values, without a gateway."""

from __future__ import annotations

import logging

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlstack.monitoring import export
from mlstack.settings import Settings
from mlstack.training import promotion
from tests.support.reports import (
    INCOME,
    PURPOSE,
    UNEMPLOYMENT,
    better_challenger_decision,
    drift_report,
    unjudged_report,
)


def exposed(gauges: list[export.Gauge]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The text exposition of `gauges` parsed back: (name, sorted labels) -> value."""
    text = generate_latest(export.collect(gauges)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_drift_gauges_score_every_column_by_severity_under_the_feature_label():
    report = drift_report((UNEMPLOYMENT, INCOME, PURPOSE))
    samples = exposed(export.drift_gauges(report))
    scores = {
        dict(labels)["feature"]: value for (name, labels), value in samples.items() if name == "mlstack_drift_score"
    }
    assert scores == {column.column: column.severity for column in (UNEMPLOYMENT, INCOME, PURPOSE)}
    statistic = (
        "mlstack_drift_statistic",
        (("algorithm", "chi-square"), ("feature", "loan_purpose"), ("version", "3")),
    )
    assert samples[statistic] == PURPOSE.score
    assert samples[("mlstack_drift_drifted_features", (("version", "3"),))] == 1.0
    assert samples[("mlstack_drift_rows", (("version", "3"),))] == 1000.0


def test_drift_verdict_is_a_state_set_with_one_state_set():
    samples = exposed(export.drift_gauges(drift_report((UNEMPLOYMENT,))))
    verdicts = {
        dict(labels)["verdict"]: value for (name, labels), value in samples.items() if name == "mlstack_drift_verdict"
    }
    assert verdicts == {"drift": 1.0, "no_drift": 0.0, "insufficient_data": 0.0}


def test_drift_gauges_of_an_unjudged_window_have_no_scores():
    names = {name for name, _ in exposed(export.drift_gauges(unjudged_report()))}
    assert "mlstack_drift_score" not in names and "mlstack_drift_drifted_features" not in names
    assert {"mlstack_drift_verdict", "mlstack_drift_rows"} <= names


def test_promotion_gauges_carry_version_verdict_and_log_loss_interval():
    decision = better_challenger_decision(champion_version="2")
    samples = exposed(export.promotion_gauges("3", decision, promoted=True))
    interval = decision.comparison.log_loss
    difference = {
        dict(labels)["bound"]: value
        for (name, labels), value in samples.items()
        if name == "mlstack_promotion_log_loss_difference"
    }
    assert difference == {"estimate": interval.estimate, "lower": interval.lower, "upper": interval.upper}
    assert samples[("mlstack_promotion_candidate_version", ())] == 3.0
    assert samples[("mlstack_promotion_champion_version", ())] == 3.0
    assert samples[("mlstack_promotion_promoted", (("version", "3"),))] == 1.0
    verdicts = {
        dict(labels)["verdict"]: value
        for (name, labels), value in samples.items()
        if name == "mlstack_promotion_verdict"
    }
    assert verdicts == {verdict: float(verdict == "promote") for verdict in promotion.VERDICTS}


def test_promotion_gauges_keep_the_old_champion_when_not_promoted():
    samples = exposed(export.promotion_gauges("3", better_challenger_decision(champion_version="2"), promoted=False))
    assert samples[("mlstack_promotion_champion_version", ())] == 2.0
    assert samples[("mlstack_promotion_promoted", (("version", "3"),))] == 0.0


def test_push_without_a_gateway_url_is_disabled_and_logged(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger=export.__name__):
        outcome = export.push_drift(Settings(state_dir=tmp_path), drift_report((UNEMPLOYMENT,)))
    assert outcome == "disabled"
    assert "MLSTACK_PUSHGATEWAY_URL is unset" in caplog.text
