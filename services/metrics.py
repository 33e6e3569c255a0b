"""Prometheus metrics of the scoring service, beyond BentoML's request metrics.

Created on first use, inside the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing the
service module, and metrics created before that would never reach `/metrics`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from mlstack.serving.scoring import Prediction

STALENESS_BUCKETS = (60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 45 * 86400, 90 * 86400)
FETCH_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class ServiceMetrics:
    """The metric objects; also the runtime's observer."""

    fetch_seconds: Any
    staleness_seconds: Any
    predictions: Any
    errors: Any
    model_info: Any

    def feature_fetch(self, seconds: float) -> None:
        """One Feast online read for a batch of requests (Redis round trip included)."""
        self.fetch_seconds.observe(seconds)

    def prediction(self, prediction: Prediction) -> None:
        """One scored application: decision and the age of its stalest feature."""
        self.predictions.labels(decision=prediction.decision, model_version=prediction.model_version).inc()
        if prediction.stalest_feature_age_seconds is not None:
            self.staleness_seconds.observe(prediction.stalest_feature_age_seconds)

    def error(self, cause: str) -> None:
        """One failed request, by cause code (online_store_timeout, invalid_request, internal, ...)."""
        self.errors.labels(cause=cause).inc()

    def loaded(self, model_name: str, model_version: str) -> None:
        """The model this worker serves."""
        self.model_info.labels(model_name=model_name, model_version=model_version).set(1)


@functools.cache
def service_metrics() -> ServiceMetrics:
    """The process's metrics (one registration per process)."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServiceMetrics(
        fetch_seconds=Histogram(
            "mlstack_feature_fetch_seconds",
            "Latency of one Feast online read (one per batch of concurrent requests).",
            buckets=FETCH_BUCKETS,
        ),
        staleness_seconds=Histogram(
            "mlstack_feature_staleness_seconds",
            "Age of the stalest feature used for a prediction.",
            buckets=STALENESS_BUCKETS,
        ),
        predictions=Counter("mlstack_predictions_total", "Scored applications.", ["decision", "model_version"]),
        errors=Counter("mlstack_prediction_errors_total", "Failed scoring requests by cause.", ["cause"]),
        model_info=Gauge(
            "mlstack_model_info",
            "The model served (value 1).",
            ["model_name", "model_version"],
            multiprocess_mode="livemax",
        ),
    )
