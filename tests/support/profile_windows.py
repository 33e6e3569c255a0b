"""Live-traffic profile windows written straight into a profile store, as the service's profiler would."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pandas as pd

from mlstack.data import profiles
from mlstack.monitoring.live_profiles import FsspecProfileSink, ProfileWindow
from mlstack.settings import Settings
from mlstack.training import model_input, registry
from mlstack.training import steps as training_steps


def scored_training_rows(settings: Settings) -> pd.DataFrame:
    """The champion's training rows and its predictions (`model_input.PROFILE_COLUMNS`): clean traffic."""
    parts = training_steps.split(settings, training_steps.load_training_set(settings, None, None))
    booster = registry.load_booster(settings, "@champion").booster
    rows = parts.train[list(model_input.FEATURES)].copy()
    rows[model_input.PREDICTION] = booster.predict(model_input.encode(rows))
    return rows


def write_windows(
    settings: Settings, version: str, samples: Iterable[pd.DataFrame], start: datetime, length: timedelta
) -> list[tuple[datetime, datetime]]:
    """One consecutive window of `length` from `start` per sample, in the settings' profile store; their bounds."""
    sink = FsspecProfileSink(settings.profile_store_url())
    bounds = []
    for i, sample in enumerate(samples):
        begins, ends = start + i * length, start + (i + 1) * length
        window = ProfileWindow(version, begins, ends, rows=len(sample))
        window.profile = profiles.PROFILER.tracker(begins)
        window.profile.track(sample)
        sink.write(window)
        bounds.append((begins, ends))
    return bounds
