"""The `train-model` flow end to end: real Feast + DuckDB, a real MLflow server on real PostgreSQL, Prefect."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from mlstack.data.generator import generate_data
from mlstack.features.store import apply_features, get_store
from mlstack.settings import get_settings
from mlstack.training import evaluation, registry
from mlstack.training import steps as training_steps
from mlstack.training.dataset import TrainingDataError, TrainingSet
from mlstack.training.versioning import SemanticVersion
from tests.support.factories import fresh_db, make_settings

DATA_END = datetime(2025, 6, 1, tzinfo=UTC)  # fixed: the training set does not depend on today's date


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, mlflow_server):
    """Settings for a state dir with data and an applied repo, registering into the MLflow server."""
    state = tmp_path_factory.mktemp("train-flow")
    settings = make_settings(
        state / "state",
        fresh_db(redis_server),
        mlflow_tracking_uri=mlflow_server,
        model_name="credit-risk-flow-test",
        mlflow_experiment="flow-test",
        data_end=DATA_END.date(),
    )
    generate_data(settings.data_dir, customers=2500, months=18, end=DATA_END, seed=3)
    apply_features(get_store(settings), settings.feature_repo)
    return settings


@pytest.fixture
def stack_env(stack, monkeypatch):
    """The same settings for code that reads them from the environment (the flow's tasks)."""
    for name in ("state_dir", "redis_url", "mlflow_tracking_uri", "model_name", "mlflow_experiment", "data_end"):
        monkeypatch.setenv(f"MLSTACK_{name.upper()}", str(getattr(stack, name)))
    get_settings.cache_clear()
    yield stack
    get_settings.cache_clear()


def test_train_model_flow_promotes_first_model_and_refuses_identical_retrain(stack_env, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import train_model_flow

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    with prefect_test_harness(server_startup_timeout=120):
        first = train_model_flow()
        second = train_model_flow()
        # A retraining that fails (here: no labelled applications in the recent window, the data
        # ends in 2025) must leave the champion and everything else as it was.
        with pytest.raises(TrainingDataError, match="no labelled applications"):
            train_model_flow(recent=True, rollout=True, reason="drift detected")

    assert first.promoted and first.decision.champion is None
    assert not second.promoted
    assert second.champion.version == first.version
    assert second.metrics.roc_auc == pytest.approx(first.metrics.roc_auc, abs=1e-12)  # deterministic training
    # Identical predictions: the log-loss difference is exactly 0, so the challenger is not better.
    assert second.decision.verdict == "not_better", second.decision.summary()
    assert any(reason.startswith("not better on log loss") for reason in second.decision.reasons)
    assert second.decision.comparison.log_loss.upper == 0.0
    assert registry.champion_version(stack_env).version == first.version

    tags = registry.describe(stack_env, second.version)
    assert tags["promotion_outcome"] == "rejected"
    assert tags["promotion_verdict"] == "not_better"
    # Every number of the decision is on the version (tags) and on its run (metrics).
    assert float(tags["diff_log_loss_upper"]) == float(tags["gate_diff_log_loss_upper"]) == 0.0
    assert float(tags["champion_calibration_slope"]) == second.decision.champion.calibration_slope
    assert float(tags["gate_bootstrap_rounds"]) == stack_env.gate_bootstrap_rounds
    for key in (
        "feature_service",
        "feast_project",
        "feature_refs",
        "training_window_start",
        "training_window_end",
        "training_set_fingerprint",
        "git_commit",
        "reference_profile_uri",
    ):
        assert tags.get(key) not in (None, "", "unknown"), key
    assert tags["feature_service"] == "credit_risk_v1"
    assert tags["training_set_fingerprint"] == first.fingerprint == second.fingerprint
    assert "credit_history:accounts_in_collections" in tags["feature_refs"]
    # Same recipe, same data: the second version is a patch of the first; the report names both versions.
    assert second.semantic_version == str(SemanticVersion.parse(first.semantic_version).bump("patch"))
    assert tags["semantic_version"] == second.semantic_version
    report = training_steps.training_markdown(second)
    assert report.startswith(f"# train-model: version {second.version} ({second.semantic_version}) not promoted")


def _ensure_champion(settings) -> None:
    """Tests below need a champion; the flow test makes one, but they must not depend on its order."""
    if registry.champion_version(settings) is None:
        assert training_steps.run_training(settings).promoted


def test_registered_champion_reproduces_logged_holdout_metric_exactly(stack_env):
    _ensure_champion(stack_env)
    training_set = training_steps.load_training_set(stack_env, None, None)
    parts = training_steps.split(stack_env, training_set)
    champion = registry.load_booster(stack_env, "@champion")
    assert type(champion.booster).__name__ == "Booster"
    assert champion.calibrator.method == "platt"  # calibrated on the slice before the holdout
    metrics = evaluation.evaluate(champion.booster, parts.holdout, stack_env.decision_threshold, champion.calibrator)
    logged = registry.describe(stack_env, champion.version)
    assert logged["calibration_method"] == "platt" and f"on {len(parts.calibration):,} rows" in logged["calibrator"]
    assert metrics.roc_auc == float(logged["holdout_roc_auc"])
    assert metrics.log_loss == float(logged["holdout_log_loss"])


def test_model_trained_on_shuffled_labels_is_never_promoted(stack_env):
    _ensure_champion(stack_env)
    champion_before = registry.champion_version(stack_env).version
    real = training_steps.load_training_set(stack_env, None, None)
    frame = real.frame.copy()
    frame["defaulted"] = np.random.default_rng(0).permutation(frame["defaulted"].to_numpy())
    shuffled = TrainingSet(
        frame, real.feature_service, real.feature_refs, real.window_start, real.window_end, "shuffled"
    )
    parts = training_steps.split(stack_env, shuffled)
    challenger = training_steps.train_retrained(stack_env, parts)
    leakage = training_steps.check_leakage(stack_env, challenger.score, parts)
    champion = training_steps.score_champion(stack_env, training_steps.load_champion(stack_env), parts)
    artifacts = training_steps.write_artifacts(challenger, parts, champion, training_steps.run_directory(stack_env))
    registered = training_steps.register(stack_env, challenger, [challenger], shuffled, parts, artifacts, leakage)
    decision = training_steps.gate(stack_env, challenger.score, champion, leakage)

    assert not decision.promote
    assert registry.promote(stack_env, registered.version, decision) is False
    assert registry.champion_version(stack_env).version == champion_before
