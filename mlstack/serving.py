"""What the online service holds: the champion Booster, the Feast store, the scorer and the profile buffer.

`ServingRuntime` is built once per worker; the BentoML service only adapts HTTP to its methods.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from mlstack import registry, scoring
from mlstack.bento import load_bundled_model
from mlstack.features import FEATURE_SERVICE, get_store
from mlstack.scoring import Prediction, Scorer
from mlstack.settings import Settings
from mlstack.traffic_profiles import ProfileBuffer


def load_model(settings: Settings) -> tuple[Any, str, str]:
    """(Booster, model name, version): the one shipped in the bento if any (immutable), else @champion."""
    bundled = load_bundled_model()
    if bundled is not None:
        return bundled.booster, bundled.name, bundled.version
    booster, version = registry.load_booster(settings, "@champion")
    return booster, settings.model_name, str(version.version)


class ServingObserver(Protocol):
    """Receives what the request path measured (the service turns it into Prometheus metrics)."""

    def feature_fetch(self, seconds: float) -> None: ...

    def prediction(self, prediction: Prediction) -> None: ...


@dataclass
class ServingRuntime:
    """A loaded model and its feature source; `predict` is the request path."""

    scorer: Scorer
    store: Any
    profiles: ProfileBuffer | None
    observer: ServingObserver | None = None
    feature_service: Any = None  # resolved once, not per request

    def __post_init__(self) -> None:
        if self.feature_service is None:
            self.feature_service = self.store.get_feature_service(FEATURE_SERVICE)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, profile: bool = True, observer: ServingObserver | None = None
    ) -> ServingRuntime:
        """Load the model (the bento's own, else @champion from MLflow), connect Feast, start the profiler."""
        booster, model_name, model_version = load_model(settings)
        store = get_store(settings)
        scorer = Scorer(
            booster,
            model_name=model_name,
            model_version=model_version,
            threshold=settings.decision_threshold,
            feature_ttls=scoring.load_feature_ttls(store),
        )
        profiles = None
        if profile:
            profiles = ProfileBuffer(settings.profile_store_url(), window_seconds=settings.profile_window_seconds)
            profiles.start()
        return cls(scorer, store, profiles, observer)

    def predict(self, applications: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Features from Redis through Feast, one Booster call, rows handed to the profiler (no whylogs here)."""
        started = time.perf_counter()
        online = scoring.fetch_online_features(self.store, applications, self.feature_service)
        if self.observer is not None:
            self.observer.feature_fetch(time.perf_counter() - started)
        scored = self.scorer.evaluate_batch(applications, online.values, online.event_timestamps, datetime.now(UTC))
        for row in scored:
            if self.profiles is not None:
                self.profiles.add(row.profile_row())
            if self.observer is not None:
                self.observer.prediction(row.prediction)
        return [row.prediction for row in scored]

    def close(self, timeout: float = 10.0) -> None:
        """Flush the partial profile window (graceful shutdown)."""
        if self.profiles is not None:
            self.profiles.stop(timeout)
