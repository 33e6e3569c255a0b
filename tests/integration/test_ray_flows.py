"""The flows unchanged on the Ray engine: `materialize-features` then `train-model` with MLSTACK_COMPUTE_ENGINE=ray.

A real local Ray (2 CPUs), Redis, an MLflow server on PostgreSQL and Prefect's test server. The Ray
parts are tested in detail in test_ray_features.py and test_ray_training.py; this module checks that
the flows, configured by the one setting and nothing else, run them end to end: the windows are
recorded only after Redis holds every row, and the model is fitted on Ray, registered and promoted.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest

from mlstack.data.generator import generate_data
from mlstack.data.schema import CUSTOMER_PROFILE_FILE
from mlstack.features import ray_engine
from mlstack.features.online_store import make_client
from mlstack.features.store import BATCH_VIEWS, get_store
from mlstack.settings import get_settings
from mlstack.training import registry
from tests.support.factories import fresh_db, make_settings

pytestmark = pytest.mark.timeout(900)
ENVIRONMENT = ("state_dir", "redis_url", "mlflow_tracking_uri", "model_name", "mlflow_experiment")


@pytest.fixture
def ray_env(tmp_path, redis_server, mlflow_server, ray_cluster, monkeypatch):
    """Settings with data ending today (materialisation's first window ends now), exported, with the Ray engine."""
    target = fresh_db(redis_server)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    settings = make_settings(
        tmp_path / "state",
        target,
        mlflow_tracking_uri=mlflow_server,
        model_name="credit-risk-ray-flows",
        mlflow_experiment="ray-flows-test",
        compute_engine="ray",
    )
    generate_data(settings.data_dir, customers=2000, months=18, end=today, seed=11)
    for name in ENVIRONMENT:
        monkeypatch.setenv(f"MLSTACK_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("MLSTACK_COMPUTE_ENGINE", "ray")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()
    make_client(target, settings).flushdb()


def test_materialize_and_train_flows_run_unchanged_on_ray(ray_env):
    from prefect.testing.utilities import prefect_test_harness

    from flows.materialize import materialize_features_flow
    from flows.train import train_model_flow

    assert get_settings().compute_engine == "ray"
    with prefect_test_harness(server_startup_timeout=120):
        materialised = materialize_features_flow()
        trained = train_model_flow()

    store = get_store(get_settings())
    assert ray_engine.on_ray(store)  # the flows' store was configured for Ray by the setting alone
    assert [result.feature_view for result in materialised] == list(BATCH_VIEWS)
    for result in materialised:  # recorded only after the read-back found every row in Redis
        assert result.rows > 0, result
        assert store.get_feature_view(result.feature_view).most_recent_end_time == result.end
    profiles = duckdb.execute(
        "SELECT count(DISTINCT customer_id) FROM read_parquet(?) WHERE event_timestamp > ?",
        [
            str(ray_env.data_dir / CUSTOMER_PROFILE_FILE),
            materialised[0].end - store.get_feature_view(BATCH_VIEWS[0]).ttl,
        ],
    ).fetchone()
    assert profiles is not None and materialised[0].rows == profiles[0]  # the latest row of each customer in the TTL

    assert trained.promoted, trained.decision.summary()
    tags = registry.describe(ray_env, trained.version)
    assert tags["compute_engine"] == "ray" and tags["train_workers"] == str(ray_env.ray_train_workers)
