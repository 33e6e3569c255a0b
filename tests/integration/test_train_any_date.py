"""The first training of the smallest fixture does not depend on the date its data ends.

The serving stack's data (1,500 customers, seed 21, 18 months) ends wherever the clock is when the
suite runs. Here it ends on twelve dates a month apart over a year: the first model must be promoted
on every one, and since a seed means the same world whatever the end date, its holdout metrics must
be the same on every one too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlstack.data.generator import generate_data
from mlstack.features.store import apply_features, get_store
from mlstack.training import steps as training_steps
from tests.support.factories import fresh_db, make_settings

pytestmark = pytest.mark.slow

FIRST_END = datetime(2026, 1, 1, tzinfo=UTC)
ENDS = [FIRST_END + timedelta(days=30 * k + k % 3) for k in range(12)]  # also odd weekdays and month days


def test_first_training_is_promoted_with_the_same_metrics_on_any_end_date(tmp_path, redis_server):
    seen = {}
    for end in ENDS:
        settings = make_settings(tmp_path / end.date().isoformat(), fresh_db(redis_server), data_end=end.date())
        generate_data(settings.data_dir, customers=1500, months=18, end=end, seed=21)
        apply_features(get_store(settings), settings.feature_repo)
        outcome = training_steps.run_training(settings, progress=lambda _: None)
        assert outcome.promoted, f"{end.date()}: {outcome.summary()}"
        seen[end.date()] = (tuple(outcome.rows.items()), outcome.metrics.roc_auc, outcome.metrics.log_loss)
    assert len(set(seen.values())) == 1, seen
