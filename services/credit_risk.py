"""BentoML service `credit-risk`: scores loan applications with the @champion Booster on online features.

Run: `bentoml serve services.credit_risk:CreditRisk`. Request/response models, scoring and error
mapping live in mlstack.serving.scoring; this module adapts HTTP to them.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from mlstack.serving.runtime import RequestBatcher, ServingRuntime
from mlstack.serving.scoring import BatchRequest, BatchResponse, LoanApplication, Prediction, classify_error
from mlstack.settings import Settings, get_settings, stack_environment
from services.guards import RequestGuard
from services.metrics import ServiceMetrics, service_metrics
from services.openapi import OpenAPIDocument

logger = logging.getLogger("mlstack.service")


def _error_response(exc: BaseException) -> JSONResponse:
    answer = classify_error(exc)
    if answer.cause == "internal":  # the client gets no details: the log must have them
        logger.error("scoring failed", exc_info=exc)
    service_metrics().error(answer.cause)
    return JSONResponse(answer.body(), status_code=answer.status)


@bentoml.service(name="credit-risk", traffic={"timeout": 10, "max_concurrency": 64})
class CreditRisk:
    """Online credit-risk scoring."""

    def __init__(self) -> None:
        os.environ.update(stack_environment(get_settings()))
        metrics = service_metrics()
        self.runtime = self.load_runtime(get_settings(), metrics)
        # Concurrent requests are scored together (one Feast read, one Booster call per batch).
        self.batcher = RequestBatcher(self.runtime.predict_async)
        metrics.loaded(self.runtime.scorer.model_name, self.runtime.scorer.model_version)
        # What is loaded now (BentoML, Feast, MLflow, the model: ~500k objects) lives as long as the worker,
        # and a full GC pass over it took ~230 ms, stalling every request in flight (the p99 under load).
        # Collect the start-up garbage once and keep the survivors out of later passes.
        gc.collect()
        gc.freeze()

    def load_runtime(self, settings: Settings, observer: ServiceMetrics) -> ServingRuntime:
        """The worker's model, feature source and profiler (benchmarks/ subclasses swap one part)."""
        return ServingRuntime.from_settings(settings, observer=observer)

    def __is_ready__(self) -> bool:
        return self.runtime is not None

    @bentoml.api(route="/predict", input_spec=LoanApplication, output_spec=Prediction)
    async def predict(self, **application: Any) -> Prediction | JSONResponse:
        """Default probability and decision for one application."""
        try:
            [prediction] = await self.batcher.submit([application])
        except Exception as exc:  # every failure becomes a JSON error with a cause, never a bare 500 page
            return _error_response(exc)
        return prediction

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest, output_spec=BatchResponse)
    async def predict_batch(self, applications: list[LoanApplication]) -> BatchResponse | JSONResponse:
        """Up to 256 applications in one call, scored with one Booster call."""
        try:
            predictions = await self.batcher.submit([application.model_dump() for application in applications])
        except Exception as exc:
            return _error_response(exc)
        return BatchResponse(predictions=predictions)

    @bentoml.on_shutdown
    def flush_profiles(self) -> None:
        """Graceful shutdown: write the partial whylogs window."""
        self.runtime.close()


# Why the ignores: @bentoml.service turns the class into a Service object, which mypy cannot see.
CreditRisk.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]
CreditRisk.add_asgi_middleware(OpenAPIDocument, service=CreditRisk)  # type: ignore[attr-defined]
