"""The demo's recession story without a service, a Prefect server or a bento: same data, same steps, same gate.

`mlstack demo` trains a champion, sends normal then recession traffic to the served bento, books
each answered application's outcome, and retrains on the last `retrain_window_days` on drift. Here
the traffic is booked directly (every application is answered in the demo too), at pinned times
after a pinned data end, so the story is the same world on any date; the training steps are the
ones the `train-model` flow runs (`steps.run_training`), on a real MLflow server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from mlstack.data.generator import generate_data
from mlstack.features.store import apply_features, get_store
from mlstack.settings import Settings
from mlstack.simulation.demo import NORMAL_TRAFFIC, RECESSION_TRAFFIC, TrafficPlan, demo_settings, traffic_seed
from mlstack.simulation.traffic import (
    applications_needed,
    book_outcomes,
    draw_applications,
    get_scenario,
    prepare_scenario,
)
from mlstack.training.steps import TrainingOutcome, run_training

DATA_END = datetime(2025, 6, 1, tzinfo=UTC)
STORY_MONTHS = 12


@dataclass(frozen=True)
class Story:
    """The first training and the retrain of one run of the story, with the recession's realised default rate."""

    first: TrainingOutcome
    retrain: TrainingOutcome
    recession_default_rate: float
    normal_default_rate: float


def book_traffic(settings: Settings, plan: TrafficPlan, at: datetime) -> float:
    """Book a burst of the plan's applications as if sent from `at` at the plan's rate; the realised default rate."""
    scenario = get_scenario(plan.scenario)
    seed = traffic_seed(settings, plan)
    snapshots, _ = prepare_scenario(settings, scenario, at, seed)
    count = applications_needed(plan.rate, timedelta(seconds=plan.duration_seconds))
    applications = draw_applications(snapshots, scenario, count, seed + 1)
    sent_at = [at + timedelta(seconds=1 + i / plan.rate) for i in range(count)]
    answered = applications.assign(sent_at=pd.to_datetime(sent_at, utc=True))
    _, default_rate = book_outcomes(settings, answered, snapshots, scenario, seed + 2)
    return default_rate


def tell_story(base: Settings, customers: int) -> Story:
    """Data, first champion, normal then recession traffic an hour after the data end, the retrain on the last days."""
    settings = demo_settings(base)
    generate_data(settings.data_dir, customers=customers, months=STORY_MONTHS, end=DATA_END, seed=settings.seed)
    apply_features(get_store(settings), settings.feature_repo)
    first = run_training(settings, end=DATA_END, progress=lambda _: None)
    normal = book_traffic(settings, NORMAL_TRAFFIC, DATA_END + timedelta(hours=1))
    recession = book_traffic(settings, RECESSION_TRAFFIC, DATA_END + timedelta(hours=1, minutes=5))
    end = DATA_END + timedelta(hours=2)
    retrain = run_training(
        settings,
        start=end - timedelta(days=settings.retrain_window_days),
        end=end,
        progress=lambda _: None,
        candidates=True,
    )
    return Story(first, retrain, recession, normal)
