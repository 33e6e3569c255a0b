"""A servable stack for service tests: data ending today, materialised features, a registered champion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mlstack.data.generator import generate_data
from mlstack.data.schema import CUSTOMER_PROFILE_FILE
from mlstack.features.online_store import EmbeddedRedis, RedisTarget
from mlstack.features.store import BATCH_VIEWS, apply_features, get_store, materialize_view
from mlstack.settings import TELEMETRY_OFF, Settings
from mlstack.stack.service import LocalService, start_service, stop_service
from mlstack.training import steps as training_steps
from tests.support.factories import make_settings, redis_url

GOOD = {"customer_id": 1, "zipcode": "00000", "loan_amount": 12000.0, "loan_term_months": 36, "loan_purpose": "car"}


@dataclass
class ServingStack:
    """Settings, the Redis server of this stack (tests may stop or freeze it) and a known application."""

    settings: Settings
    server: EmbeddedRedis
    target: RedisTarget
    known: dict

    def environment(self) -> dict[str, str]:
        """The MLSTACK_* variables that make `get_settings()` in a service process see this stack."""
        return {
            "MLSTACK_STATE_DIR": str(self.settings.state_dir),
            "MLSTACK_REDIS_URL": redis_url(self.target),
            "MLSTACK_DATA_END": self.settings.data_end.isoformat(),
            "MLSTACK_PROFILE_WINDOW_SECONDS": str(self.settings.profile_window_seconds),
        }


def build_serving_stack(
    state: Path,
    customers: int = 1500,
    first_model: Callable[[Settings], training_steps.TrainingOutcome] | None = None,
    **overrides: object,
) -> ServingStack:
    """Own embedded Redis, generated data, features materialised up to now, and champion v1.

    `first_model` trains and promotes v1 (default: `run_training`); `overrides` are further settings.
    """
    server = EmbeddedRedis(state / "redis", Settings())
    target = server.ensure_running()
    try:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        settings = make_settings(
            state / "state", target, data_end=today.date(), profile_window_seconds=3600, **overrides
        )
        generate_data(settings.data_dir, customers=customers, months=18, end=today, seed=21)
        store = get_store(settings, target)
        apply_features(store, settings.feature_repo)
        for view in BATCH_VIEWS:
            materialize_view(store, view, datetime.now(UTC))
        outcome = (first_model or _quiet_training)(settings)
        if not outcome.promoted:
            raise AssertionError(f"the serving stack's first model was not promoted: {outcome.summary()}")
        profile = pd.read_parquet(settings.data_dir / CUSTOMER_PROFILE_FILE, filters=[("customer_id", "==", 1)])
        zipcode = str(profile.sort_values("event_timestamp")["zipcode"].iloc[-1])
    except BaseException:
        server.stop()  # a failed build must not leave its redis-server running after the test run
        raise
    return ServingStack(settings, server, target, {**GOOD, "customer_id": 1, "zipcode": zipcode})


def applications_of(stack: ServingStack, count: int) -> list[dict]:
    """Applications of the first `count` customers, each with its latest zipcode, loan sizes varied."""
    profiles = pd.read_parquet(stack.settings.data_dir / CUSTOMER_PROFILE_FILE, columns=["customer_id", "zipcode"])
    latest = profiles.drop_duplicates("customer_id", keep="last").sort_values("customer_id").head(count)
    return [
        {**GOOD, "customer_id": int(row.customer_id), "zipcode": str(row.zipcode), "loan_amount": 4000.0 + 900 * i}
        for i, row in enumerate(latest.itertuples())
    ]


def _quiet_training(settings: Settings) -> training_steps.TrainingOutcome:
    return training_steps.run_training(settings, progress=lambda _: None)


@contextmanager
def background_service(state: Path, extra_env: dict[str, str]) -> Iterator[tuple[LocalService, ServingStack]]:
    """A servable stack and `bentoml serve` on it (mlstack's own start/stop), torn down after."""
    stack = build_serving_stack(state)
    try:
        yield start_service(stack.settings, {**stack.environment(), **TELEMETRY_OFF, **extra_env}), stack
    finally:
        stop_service(stack.settings, timeout=10)
        stack.server.stop()


def register_challenger(settings: Settings) -> str:
    """A second registered version, @challenger beside the champion: another, weaker model (3 rounds), rejected."""
    weaker = settings.model_copy(update={"learning_rate": 0.3, "num_boost_round": 3})
    outcome = training_steps.run_training(weaker, progress=lambda _: None)
    if outcome.promoted:
        raise AssertionError(f"the weaker challenger was promoted: {outcome.summary()}")
    return outcome.version
