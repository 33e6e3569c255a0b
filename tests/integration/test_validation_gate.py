"""The data-validation gate in the flows: a bad window stops `materialize-features` and `train-model` before any write.

Real Redis, real Feast + DuckDB, a real MLflow server on PostgreSQL and Prefect's test server: the
test counts Redis keys and compares every stored hash before and after, and reads MLflow's registry.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import mlflow
import pandas as pd
import pytest

from mlstack.data import validation
from mlstack.data.generator import generate_data
from mlstack.data.schema import CREDIT_HISTORY_FILE, LOAN_APPLICATIONS_FILE
from mlstack.features.online_store import RedisTarget, make_client
from mlstack.settings import Settings, get_settings
from mlstack.simulation.scenarios import SCENARIOS
from mlstack.simulation.traffic import append_snapshots, latest_snapshots, shift_snapshots
from tests.support.factories import make_settings, redis_url

BAD_SCORE = 990  # above the bureau-score range (300-850)


@pytest.fixture
def flow_env(tmp_path, redis_db, mlflow_server, monkeypatch):
    """Data ending today (materialisation reads up to now), settings in the environment, a Prefect home."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    settings = make_settings(
        tmp_path / "state",
        redis_db,
        mlflow_tracking_uri=mlflow_server,
        model_name=f"gate-{tmp_path.name}",
        mlflow_experiment=f"gate-{tmp_path.name}",
    )
    generate_data(settings.data_dir, customers=1500, months=12, end=today, seed=21)
    environment = {
        "MLSTACK_STATE_DIR": str(settings.state_dir),
        "MLSTACK_REDIS_URL": redis_url(redis_db),
        "MLSTACK_MLFLOW_TRACKING_URI": mlflow_server,
        "MLSTACK_MODEL_NAME": settings.model_name,
        "MLSTACK_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def _dump(target: RedisTarget) -> dict[bytes, dict[bytes, bytes]]:
    client = make_client(target, Settings())
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


def _artifacts(flow_run_id) -> dict[str, list[dict]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    # A table artifact's data is JSON text; the run may hold other (keyless) artifacts besides.
    return {artifact.key: json.loads(artifact.data) for artifact in found if artifact.type == "table"}


@pytest.mark.slow
def test_materialize_flow_refuses_bad_snapshots_before_writing_redis(flow_env, redis_db):
    from prefect.testing.utilities import prefect_test_harness

    from flows.materialize import materialize_features_flow

    settings = flow_env
    with prefect_test_harness(server_startup_timeout=120):
        assert materialize_features_flow(return_state=True).is_completed()
        before = _dump(redis_db)
        assert len(before) > 1500  # customers and zipcodes

        # New snapshots of every customer, after the window just materialised (so the next run would
        # write them), three with an impossible bureau score.
        shifted = shift_snapshots(
            latest_snapshots(settings.data_dir), SCENARIOS["recession"], datetime.now(UTC), seed=4
        )
        bad_customers = shifted.customers["customer_id"].head(3).tolist()
        good_scores = shifted.customers["bureau_score"].head(3).tolist()
        shifted.customers.loc[shifted.customers.index[:3], "bureau_score"] = BAD_SCORE
        append_snapshots(settings.data_dir, shifted)
        refused = materialize_features_flow(return_state=True)
        assert refused.is_failed()
        artifacts = _artifacts(refused.state_details.flow_run_id)

        after_refusal = _dump(redis_db)
        # Control: the same snapshots with valid scores pass the gate and do change Redis.
        history = pd.read_parquet(settings.data_dir / CREDIT_HISTORY_FILE)
        fixed = history["bureau_score"] == BAD_SCORE
        history.loc[fixed, "bureau_score"] = good_scores
        history.to_parquet(settings.data_dir / CREDIT_HISTORY_FILE, index=False)
        assert materialize_features_flow(return_state=True).is_completed()
        after_fix = _dump(redis_db)

    assert len(after_refusal) == len(before)
    assert after_refusal == before
    assert after_fix != before  # the test could see a write had the gate let one through

    with pytest.raises(validation.DataValidationError, match="bureau_score: in_range"):
        refused.result()
    failed = artifacts["data-validation-failed-checks"]
    assert [
        (row["table"], row["column"], row["check"], row["failing_rows"]) for row in failed if row["severity"] == "error"
    ] == [(CREDIT_HISTORY_FILE, "bureau_score", "in_range", 3)]
    # The snapshot of every customer doubles the newest window: listed as warnings beside the error.
    assert {row["check"] for row in failed if row["severity"] == "warning"} == {"row_count_band"}
    rows = artifacts["data-validation-failing-rows"]
    assert sorted(int(row["customer_id"]) for row in rows) == sorted(bad_customers)
    quarantined = list(settings.quarantine_dir.iterdir())
    assert len(quarantined) == 1
    assert pd.read_parquet(quarantined[0])["bureau_score"].tolist() == [BAD_SCORE] * 3


@pytest.mark.slow
def test_train_flow_refuses_duplicate_applications_before_mlflow(flow_env, redis_db):
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import train_model_flow

    settings = flow_env
    applications = pd.read_parquet(settings.data_dir / LOAN_APPLICATIONS_FILE)
    pd.concat([applications, applications.tail(2)], ignore_index=True).to_parquet(
        settings.data_dir / LOAN_APPLICATIONS_FILE, index=False
    )
    keys_before = len(_dump(redis_db))

    with prefect_test_harness(server_startup_timeout=120):
        state = train_model_flow(return_state=True)

    assert state.is_failed()
    with pytest.raises(validation.DataValidationError, match="application_id: unique"):
        state.result()
    assert len(_dump(redis_db)) == keys_before
    # Both URIs: without registry_uri, registry calls go to MLflow's process-wide one, which an earlier
    # module's flow may have pointed at its own (stopped) server.
    uri = settings.tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_model_versions(f"name = '{settings.model_name}'") == []
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
