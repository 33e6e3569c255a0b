"""The batch flows' results as Prometheus gauges, pushed to a Pushgateway: drift per feature, verdicts, promotions.

Why a Pushgateway and not a metrics endpoint: the monitor and training flows are batch jobs (a
process-pool subprocess locally and in compose, a Kubernetes Job per flow run); they exit when done,
so nothing would be left to scrape. Their result is a per-model, service-level fact ("the last
drift verdict of credit-risk"), which is exactly what Prometheus documents the Pushgateway for.
Each push replaces the whole group (``job`` and ``model``), so a feature that is no longer scored
does not linger. Prometheus scrapes the gateway with ``honor_labels`` (infra/prometheus/prometheus.yml).

Adding a gauge: a function that turns a result into `Gauge` values (like `drift_gauges`) and a
``push_*`` that sends them under its own job with `push`. Nothing else changes.
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.error import URLError

from prometheus_client import CollectorRegistry
from prometheus_client import Gauge as PrometheusGauge
from prometheus_client.exposition import push_to_gateway

from mlstack.monitoring.drift import DriftReport, Verdict
from mlstack.settings import Settings
from mlstack.training import promotion
from mlstack.training.promotion import Decision

logger = logging.getLogger(__name__)

MONITOR_JOB = "mlstack-monitor"
TRAIN_JOB = "mlstack-train"
PUSH_TIMEOUT_SECONDS = 10.0

PushOutcome = Literal["pushed", "disabled", "failed"]


@dataclass(frozen=True)
class Gauge:
    """One sample: a gauge's name, help text, labels and value (one per label set)."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def drift_gauges(report: DriftReport) -> list[Gauge]:
    """The monitor's report as gauges: severity and statistic per feature, the verdict, rows, drifted count.

    ``mlstack_drift_score{feature}`` is the severity (1.0 at the threshold: comparable across the
    Hellinger and chi-square columns), the series the Grafana drift panel plots.
    """
    version = {"version": str(report.model_version)}
    gauges = [
        *_state_set(
            "mlstack_drift_verdict",
            "Last drift verdict of the monitored version (1 for the verdict in force, 0 for the others).",
            typing.get_args(Verdict),
            report.verdict,
            version,
        ),
        Gauge("mlstack_drift_rows", "Live rows in the judged window.", float(report.rows), version),
        Gauge(
            "mlstack_drift_window_end_timestamp_seconds",
            "End of the judged window (Unix time).",
            report.window_end.timestamp(),
            version,
        ),
    ]
    if report.verdict == "insufficient_data":
        return gauges
    gauges.append(
        Gauge(
            "mlstack_drift_drifted_features",
            "Columns whose drift crossed the threshold in the last judged window.",
            float(len(report.drifted_features)),
            version,
        )
    )
    for column in report.ranked():
        labels = {"feature": column.column, "algorithm": column.algorithm, **version}
        gauges.append(
            Gauge(
                "mlstack_drift_score",
                "Drift severity of a column against the training profile (1.0 = threshold).",
                column.severity,
                labels,
            )
        )
        gauges.append(
            Gauge(
                "mlstack_drift_statistic",
                "The drift test's statistic of a column: Hellinger distance, or chi-square p-value.",
                column.score,
                labels,
            )
        )
    return gauges


def promotion_gauges(version: str, decision: Decision, promoted: bool) -> list[Gauge]:
    """The last champion/challenger decision as gauges: the candidate, the verdict, the log-loss difference."""
    labels = {"version": str(version)}
    champion = str(version) if promoted else decision.champion_version
    gauges = [
        Gauge("mlstack_promotion_candidate_version", "Model version the last gate decided on.", float(version)),
        *_state_set(
            "mlstack_promotion_verdict",
            "Verdict of the last gate decision (1 for the verdict in force, 0 for the others).",
            promotion.VERDICTS,
            decision.verdict,
            labels,
        ),
        Gauge(
            "mlstack_promotion_promoted", "1 if the last candidate became @champion, else 0.", float(promoted), labels
        ),
    ]
    if champion is not None:
        gauges.append(
            Gauge("mlstack_promotion_champion_version", "@champion after the last decision.", float(champion))
        )
    if decision.comparison is not None:
        difference = decision.comparison.log_loss
        for bound, value in (
            ("estimate", difference.estimate),
            ("lower", difference.lower),
            ("upper", difference.upper),
        ):
            gauges.append(
                Gauge(
                    "mlstack_promotion_log_loss_difference",
                    "Holdout log loss, challenger minus champion (paired bootstrap; below 0: challenger better).",
                    value,
                    {**labels, "bound": bound},
                )
            )
    return gauges


def push(settings: Settings, job: str, gauges: Sequence[Gauge]) -> PushOutcome:
    """Replace the group (`job`, model) on the Pushgateway with `gauges`; never raises for the gateway.

    Unset `pushgateway_url`: nothing is pushed ("disabled", logged). An unreachable or refusing
    gateway: "failed", logged as a warning naming the URL. The flows' own results (MLflow, Prefect
    artifacts) do not depend on the push.
    """
    url = settings.pushgateway_url
    if not url:
        logger.info("metrics of %s not pushed: MLSTACK_PUSHGATEWAY_URL is unset", job)
        return "disabled"
    registry = collect(gauges)
    try:
        push_to_gateway(
            url, job=job, registry=registry, grouping_key={"model": settings.model_name}, timeout=PUSH_TIMEOUT_SECONDS
        )
    except (URLError, OSError, ValueError) as exc:
        logger.warning("metrics of %s not pushed to MLSTACK_PUSHGATEWAY_URL=%s: %s", job, url, exc)
        return "failed"
    logger.info("pushed %d samples of %s to %s", len(gauges), job, url)
    return "pushed"


def push_drift(settings: Settings, report: DriftReport) -> PushOutcome:
    """Push the monitor's report (`drift_gauges`) under job ``mlstack-monitor``."""
    return push(settings, MONITOR_JOB, drift_gauges(report))


def push_promotion(settings: Settings, version: str, decision: Decision, promoted: bool) -> PushOutcome:
    """Push the gate's decision (`promotion_gauges`) under job ``mlstack-train``."""
    return push(settings, TRAIN_JOB, promotion_gauges(version, decision, promoted))


def collect(gauges: Sequence[Gauge]) -> CollectorRegistry:
    """A fresh registry holding `gauges` (one Prometheus gauge per name; its label names from its samples)."""
    registry = CollectorRegistry()
    families: dict[str, PrometheusGauge] = {}
    for gauge in gauges:
        if not math.isfinite(gauge.value):
            continue  # no comparison, no number: an absent series says so better than NaN
        family = families.get(gauge.name)
        if family is None:
            family = PrometheusGauge(gauge.name, gauge.help, labelnames=sorted(gauge.labels), registry=registry)
            families[gauge.name] = family
        if gauge.labels:
            family.labels(**gauge.labels).set(gauge.value)
        else:
            family.set(gauge.value)
    return registry


def _state_set(
    name: str, help_text: str, states: Sequence[str], current: str, labels: Mapping[str, str]
) -> list[Gauge]:
    """One gauge per possible state, 1 for `current` (kube-state-metrics' style: alert on `== 1`)."""
    return [Gauge(name, help_text, float(state == current), {**labels, "verdict": state}) for state in states]
