"""Benchmark-only BentoML services around the real one (never part of the production API).

- `CreditRiskBench`: the real `CreditRisk` (same class, config and middlewares) plus `POST /noop`,
  which validates the same request and returns a constant Prediction: the framework floor (S0).
  Ablations, read from the environment when the worker starts:
  `SERVING_BENCH_PROFILE=0` scores without whylogs profiling; `SERVING_BENCH_MODEL=pyfunc` scores
  with the MLflow pyfunc of @champion instead of the native Booster.
- `CreditRiskPeer`: the same service, except that features come from a `feast serve` feature server
  over HTTP (`SERVING_BENCH_FEAST_URL`): the two-hop architecture (client -> model service -> feature
  server -> Redis) that the issue compares against.

    bentoml serve benchmarks.serving_service:CreditRiskBench
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import bentoml
import httpx
import numpy as np
import pandas as pd

from mlstack.features.store import FEATURE_SERVICE, get_store
from mlstack.monitoring.live_profiles import ProfileBuffer
from mlstack.serving import scoring
from mlstack.serving.runtime import ServingRuntime, build_scorer, load_model
from mlstack.serving.scoring import LoanApplication, Prediction
from mlstack.settings import Settings
from mlstack.training import model_input
from services.credit_risk import CreditRisk
from services.guards import RequestGuard
from services.metrics import ServiceMetrics
from services.openapi import OpenAPIDocument

PROFILE_ENV = "SERVING_BENCH_PROFILE"
MODEL_ENV = "SERVING_BENCH_MODEL"
FEAST_URL_ENV = "SERVING_BENCH_FEAST_URL"

NOOP_ANSWER = Prediction(
    default_probability=0.1,
    decision="approve",
    threshold=0.2,
    model_name="credit-risk",
    model_version="0",
    features_found=True,
    missing_features=[],
    stale_features=[],
    freshest_feature_age_seconds=1.0,
    stalest_feature_age_seconds=2.0,
)


class PyfuncModel:
    """The MLflow pyfunc of a model behind the one Booster method the Scorer calls (`predict`, raw score too)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, matrix: np.ndarray, num_threads: int = 1, raw_score: bool = False) -> np.ndarray:
        """Probabilities of the rows of `matrix` (columns in model_input.FEATURES order), or their log-odds.

        The pyfunc gives probabilities only; a calibrated model needs the raw score, recovered as
        logit(p) (equal to LightGBM's raw score within float error).
        """
        frame = pd.DataFrame(matrix, columns=list(model_input.FEATURES))
        probabilities = np.asarray(self.model.predict(frame), dtype=np.float64)
        return np.log(probabilities) - np.log1p(-probabilities) if raw_score else probabilities


def load_pyfunc(settings: Settings) -> PyfuncModel:
    """`mlflow.pyfunc.load_model` of @champion (the registry the stack trains into)."""
    import mlflow.pyfunc

    from mlstack.training import registry

    registry.tracking(settings)
    return PyfuncModel(mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion"))


@bentoml.service(name="credit-risk-bench", **CreditRisk.config)
class CreditRiskBench(CreditRisk.inner):
    """The real service, a no-op endpoint beside it, and the ablations of the environment."""

    def load_runtime(self, settings: Settings, observer: ServiceMetrics) -> ServingRuntime:
        profile = os.environ.get(PROFILE_ENV, "1") != "0"
        runtime = ServingRuntime.from_settings(settings, profile=profile, observer=observer)
        if os.environ.get(MODEL_ENV, "booster") == "pyfunc":
            runtime.scorer.booster = load_pyfunc(settings)
        return runtime

    @bentoml.api(route="/noop", input_spec=LoanApplication, output_spec=Prediction)
    async def noop(self, **application: Any) -> Prediction:
        """The same request, validated, and a constant answer: what BentoML costs on its own."""
        return NOOP_ANSWER


CreditRiskBench.add_asgi_middleware(RequestGuard)
CreditRiskBench.add_asgi_middleware(OpenAPIDocument, service=CreditRiskBench)


class FeatureServerSource:
    """`scoring.OnlineFeatureSource` over a `feast serve` HTTP feature server (one POST per read)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self.async_http: httpx.AsyncClient | None = None  # made on the serving loop, at first use

    def get_feature_service(self, name: str) -> str:
        return name

    def get_online_features(self, features: Any, entity_rows: list[dict[str, Any]]) -> FeatureServerResponse:
        response = self.http.post("/get-online-features", json=_request(features, entity_rows))
        response.raise_for_status()
        return FeatureServerResponse(response.json())

    async def get_online_features_async(
        self, features: Any, entity_rows: list[dict[str, Any]]
    ) -> FeatureServerResponse:
        if self.async_http is None:
            self.async_http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout)
        response = await self.async_http.post("/get-online-features", json=_request(features, entity_rows))
        response.raise_for_status()
        return FeatureServerResponse(response.json())


def _request(feature_service: Any, entity_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The feature server's request body: the feature service and the entity/request columns."""
    return {
        "feature_service": feature_service,
        "entities": {name: [row[name] for row in entity_rows] for name in entity_rows[0]},
    }


class FeatureServerResponse:
    """The feature server's JSON answer in the shape of `feast.OnlineResponse.to_dict`."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, list[Any]]:
        names = self.body["metadata"]["feature_names"]
        columns: dict[str, list[Any]] = {}
        for name, result in zip(names, self.body["results"], strict=True):
            columns[name] = result["values"]  # null when not found; a value past its TTL is kept, as in-process
            if include_event_timestamps:
                columns[name + scoring.TIMESTAMP_SUFFIX] = [_epoch(stamp) for stamp in result["event_timestamps"]]
        return columns


def _epoch(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).timestamp())


@bentoml.service(name="credit-risk-peer", **CreditRisk.config)
class CreditRiskPeer(CreditRisk.inner):
    """The real service with its features read from `feast serve` over HTTP instead of from Redis directly."""

    def load_runtime(self, settings: Settings, observer: ServiceMetrics) -> ServingRuntime:
        ttls = scoring.load_feature_ttls(get_store(settings))  # start-up only: the TTLs are in the registry
        scorer = build_scorer(settings, load_model(settings), ttls)
        profiles = ProfileBuffer(
            settings.profile_store_url(), window_seconds=settings.profile_window_seconds, process=True
        )
        profiles.start()
        source = FeatureServerSource(os.environ[FEAST_URL_ENV])
        return ServingRuntime(scorer, source, profiles, observer, feature_service=FEATURE_SERVICE)


CreditRiskPeer.add_asgi_middleware(RequestGuard)
CreditRiskPeer.add_asgi_middleware(OpenAPIDocument, service=CreditRiskPeer)
