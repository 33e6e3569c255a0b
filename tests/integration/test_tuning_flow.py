"""`train-model` with tuning: the weekly run tunes and records every trial; a retrain reuses the champion's params.

Real Feast + DuckDB, a real MLflow server on PostgreSQL, Prefect's test server. The label-maturity
gap is shortened (60 days) so that 18 months of small synthetic history give three folds quickly.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pytest

from mlstack.data.generator import generate_data
from mlstack.features.store import apply_features, get_store
from mlstack.settings import get_settings
from mlstack.training import registry, tuning
from tests.support.factories import fresh_db, make_settings, redis_url

DATA_END = datetime(2025, 6, 1, tzinfo=UTC)
TRIALS = 3


@pytest.fixture
def flow_env(tmp_path, redis_server, mlflow_server, monkeypatch):
    target = fresh_db(redis_server)
    settings = make_settings(
        tmp_path / "state",
        target,
        mlflow_tracking_uri=mlflow_server,
        model_name="credit-risk-tuning-test",
        mlflow_experiment="tuning-test",
        data_end=DATA_END.date(),
        label_maturity_days=60,
        tuning_trials=TRIALS,
        num_boost_round=300,
    )
    generate_data(settings.data_dir, customers=2500, months=18, end=DATA_END, seed=3)
    apply_features(get_store(settings), settings.feature_repo)
    environment = {
        "MLSTACK_STATE_DIR": str(settings.state_dir),
        "MLSTACK_REDIS_URL": redis_url(target),
        "MLSTACK_MLFLOW_TRACKING_URI": mlflow_server,
        "MLSTACK_MODEL_NAME": settings.model_name,
        "MLSTACK_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
        "MLSTACK_DATA_END": DATA_END.date().isoformat(),
        "MLSTACK_LABEL_MATURITY_DAYS": "60",
        "MLSTACK_TUNING_TRIALS": str(TRIALS),
        "MLSTACK_NUM_BOOST_ROUND": "300",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.mark.slow
def test_weekly_run_tunes_and_records_trials_then_retrain_reuses_champion_params(flow_env):
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import train_model_flow

    settings = flow_env
    with prefect_test_harness(server_startup_timeout=120):
        tuned = train_model_flow(tune=True)
        retrained = train_model_flow(reason="drift detected")

    # Both URIs: without registry_uri, registry calls go to MLflow's process-wide one, which an earlier
    # module's flow may have pointed at its own (stopped) server.
    uri = settings.tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = registry.describe(settings, tuned.version)
    second = registry.describe(settings, retrained.version)
    # How many purged folds fit depends on the rows before the calibration and holdout slices (2 or 3 here).
    assert re.match(rf"tuned: best of {TRIALS} trials on [23] folds", first[tuning.PARAMS_SOURCE_TAG])
    assert second[tuning.PARAMS_SOURCE_TAG] == f"champion: champion v{tuned.version}'s"
    assert tuned.promoted
    chosen = json.loads(first[tuning.PARAMS_TAG])
    assert json.loads(second[tuning.PARAMS_TAG]) == chosen

    downloaded = client.download_artifacts(tuned.run_id, tuning.TRIALS_ARTIFACT, str(settings.state_dir))
    study = json.loads(Path(downloaded).read_text())
    assert [trial["number"] for trial in study["trials"]] == list(range(TRIALS))
    assert {key: chosen[key] for key in study["best"]["params"]} == study["best"]["params"]
    history = client.get_metric_history(tuned.run_id, "tuning_trial_cv_log_loss")
    assert sorted(metric.step for metric in history) == list(range(TRIALS))
    # The run's params are the ones trained with, on both runs.
    for outcome in (tuned, retrained):
        logged = client.get_run(outcome.run_id).data.params
        assert float(logged["learning_rate"]) == pytest.approx(chosen["learning_rate"])
        assert int(logged["num_leaves"]) == chosen["num_leaves"]
    # The settings' defaults were not what the study chose (else reuse could not be told from defaults).
    assert (chosen["learning_rate"], chosen["num_leaves"]) != (settings.learning_rate, settings.num_leaves)
