"""Live-traffic profile windows written straight into a profile store, as the service's profiler would."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pandas as pd

from mlstack.data import profiles
from mlstack.monitoring.live_profiles import FsspecProfileSink, ProfileWindow
from mlstack.settings import Settings
from mlstack.training import evaluation, model_input, registry
from mlstack.training import steps as training_steps


def scored_training_rows(settings: Settings) -> pd.DataFrame:
    """The champion's training rows and its predictions (`model_input.PROFILE_COLUMNS`): clean traffic."""
    parts = training_steps.split(settings, training_steps.load_training_set(settings, None, None))
    champion = registry.load_booster(settings, "@champion")
    rows = parts.train[list(model_input.FEATURES)].copy()
    rows[model_input.PREDICTION] = evaluation.predict(champion.booster, rows, champion.calibrator)
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


def write_drifted_windows(settings: Settings, start: datetime, windows: int = 3) -> tuple[datetime, datetime]:
    """The champion's training rows in a recession (unemployment up ten points) as `windows` 5-minute windows; span."""
    import numpy as np

    from mlstack.monitoring import steps as monitoring_steps

    rows = scored_training_rows(settings)
    shifted = rows.assign(unemployment_rate=rows["unemployment_rate"] + 0.10)
    version = monitoring_steps.monitored_version(settings, None)
    bounds = write_windows(settings, version, np.array_split(shifted, windows), start, timedelta(minutes=5))
    return bounds[0][0], bounds[-1][1]


if __name__ == "__main__":  # `python -m tests.support.profile_windows START`: in another process's environment
    import sys

    from mlstack.settings import get_settings

    span = write_drifted_windows(get_settings(), datetime.fromisoformat(sys.argv[1]))
    print(" ".join(moment.isoformat() for moment in span))
