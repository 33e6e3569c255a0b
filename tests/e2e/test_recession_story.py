"""The demo's ending across seeds: after the recession the retrain is promoted because the evidence says so.

The story of `mlstack demo` (tests/support/recession_story.py: the demo's traffic plans and retrain
window, booked without a service) on a real Feast + DuckDB offline store and a real MLflow server.
For each seed the three candidates are built and scored on the same post-drift holdout, the best
by log loss goes to the gate, and the gate promotes it: log loss better at 95 %, no significant
ranking loss beyond the margin, the decision and the candidates recorded on the version.
"""

from __future__ import annotations

import math

import pytest

from mlstack.training import registry
from mlstack.training.promotion import Decision
from mlstack.training.steps import CANDIDATE_KINDS, candidates_from_tags
from tests.support.factories import fresh_db, make_settings
from tests.support.recession_story import tell_story

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CUSTOMERS = 2_500


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [42, 7, 1])
def test_recession_retrain_is_promoted_on_the_evidence_across_seeds(seed, tmp_path, redis_server, mlflow_server):
    settings = make_settings(
        tmp_path / "state",
        fresh_db(redis_server),
        seed=seed,
        mlflow_tracking_uri=mlflow_server,
        model_name=f"credit-risk-story-{seed}",
        mlflow_experiment=f"story-{seed}",
    )
    story = tell_story(settings, CUSTOMERS)

    assert story.first.promoted, story.first.decision.summary()
    assert story.recession_default_rate > story.normal_default_rate + 0.08  # the recession really moved the risk
    retrain = story.retrain
    assert [result.kind for result in retrain.candidates] == list(CANDIDATE_KINDS)
    best = min(retrain.candidates, key=lambda result: result.log_loss)
    assert retrain.challenger_kind == best.kind
    assert retrain.metrics.log_loss == pytest.approx(best.log_loss, abs=1e-12)

    decision = retrain.decision
    comparison = decision.comparison
    assert comparison is not None and comparison.defaults >= decision.rule.min_defaults
    # The champion predicts the old base rate: far too few defaults on the post-drift holdout.
    assert decision.champion.calibration_intercept > 0.3
    assert abs(decision.challenger.calibration_intercept) < abs(decision.champion.calibration_intercept) / 2
    assert comparison.log_loss.upper < 0, decision.summary()
    assert comparison.roc_auc.upper >= -decision.rule.auc_margin, decision.summary()
    assert decision.verdict == "promote" and retrain.promoted, decision.summary()
    assert registry.champion_version(settings).version == retrain.version

    tags = registry.describe(settings, retrain.version)
    assert Decision.from_tags(tags).verdict == "promote"
    recorded = candidates_from_tags(tags)
    assert [result.kind for result in recorded] == list(CANDIDATE_KINDS)
    for ours, theirs in zip(recorded, retrain.candidates, strict=True):
        assert ours.log_loss == theirs.log_loss and ours.roc_auc == theirs.roc_auc
    assert tags["challenger_candidate"] == retrain.challenger_kind
    assert math.isclose(float(tags["candidate_retrained_log_loss"]), retrain.candidates[0].log_loss)
    assert tags["calibration_method"] == "platt"
