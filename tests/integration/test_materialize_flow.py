"""`materialize-features` with a failing view, on both engines, and the registry that keeps concurrent windows apart.

Real Redis, real Feast + DuckDB (and a real local Ray for the Ray engine) and Prefect's test server. On
the Ray engine the flow runs its views at once (Prefect's thread pool); locally one after another.
Either way every view runs to its end: a view that fails (retried once, as `_worth_retrying` allows)
must not cost the others their windows, and the flow fails naming it.
"""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from feast import FeatureStore
from feast.repo_config import RegistryConfig

from mlstack.data.generator import generate_data
from mlstack.features.materialization import MaterializationError
from mlstack.features.online_store import make_client
from mlstack.features.store import BATCH_VIEWS, apply_features, get_store, views_in_parallel
from mlstack.settings import Settings, get_settings
from tests.support.factories import make_settings, redis_url

pytestmark = pytest.mark.timeout(600)
MISSING_VIEW = "no_such_view"


def _flow_env(tmp_path, redis_db, monkeypatch, **overrides) -> Settings:
    """Data ending today (materialisation reads up to now), settings in the environment, a Prefect home."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    settings = make_settings(tmp_path / "state", redis_db, **overrides)
    generate_data(settings.data_dir, customers=1500, months=12, end=today, seed=5)
    environment = {
        "MLSTACK_STATE_DIR": str(settings.state_dir),
        "MLSTACK_REDIS_URL": redis_url(redis_db),
        "MLSTACK_COMPUTE_ENGINE": settings.compute_engine,
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return settings


@pytest.fixture
def local_env(tmp_path, redis_db, monkeypatch, restore_feast_environment):
    yield _flow_env(tmp_path, redis_db, monkeypatch, compute_engine="local")
    get_settings.cache_clear()


@pytest.fixture
def ray_env(tmp_path, redis_db, monkeypatch, ray_cluster, restore_feast_environment):
    yield _flow_env(tmp_path, redis_db, monkeypatch, compute_engine="ray")
    get_settings.cache_clear()


def _task_runs(flow_run_id) -> dict[str, Any]:
    """Task run name -> the task run (state, attempts, start and end times) of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}


@pytest.mark.parametrize("env", ["local_env", "ray_env"])
def test_materialize_flow_failing_view_keeps_other_windows_and_names_the_view(env, request, redis_db):
    from prefect.testing.utilities import prefect_test_harness

    from flows.materialize import materialize_features_flow

    settings = request.getfixturevalue(env)
    assert views_in_parallel(get_settings()) == (settings.compute_engine == "ray")
    end = datetime.now(UTC)
    views = [BATCH_VIEWS[0], MISSING_VIEW, *BATCH_VIEWS[1:]]  # the failure between views: later ones still run
    with prefect_test_harness(server_startup_timeout=120):
        state = materialize_features_flow(end=end, feature_views=views, return_state=True)
        assert state.is_failed()
        error = state.result(raise_on_failure=False)
        runs = _task_runs(state.state_details.flow_run_id)
        # Control: the same flow without the missing view completes, and has nothing left to write.
        again = materialize_features_flow(end=end, return_state=True)

    assert isinstance(error, MaterializationError), error
    assert f"1 of {len(views)} feature views failed ({MISSING_VIEW}:" in str(error)
    assert f"The windows of {', '.join(BATCH_VIEWS)} were recorded." in str(error)
    attempts = {name: (run.state_name, run.run_count) for name, run in runs.items()}
    assert attempts[f"materialize-{MISSING_VIEW}"] == ("Failed", 2)  # retried once: not a refused write
    for view in BATCH_VIEWS:
        assert attempts[f"materialize-{view}"] == ("Completed", 1)
    spans = [(runs[f"materialize-{view}"].start_time, runs[f"materialize-{view}"].end_time) for view in BATCH_VIEWS]
    overlapping = any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2))
    assert overlapping == views_in_parallel(get_settings()), spans  # at once on Ray, one after another locally
    store = get_store(get_settings())
    for view in BATCH_VIEWS:  # each completed view recorded its own window, up to `end`
        assert store.get_feature_view(view).most_recent_end_time == end, view
    assert make_client(redis_db, Settings()).dbsize() > 1500  # customers and zipcodes written

    assert again.is_completed()
    assert [result.rows for result in again.result()] == [0] * len(BATCH_VIEWS)


def _stale_stores(settings: Settings, registry: RegistryConfig | None) -> tuple[FeatureStore, FeatureStore]:
    """Two stores of one applied repo (the repo's SQL registry, or ``registry``), each with a copy of the registry."""
    first = get_store(settings)
    if registry is not None:
        config = copy.deepcopy(first.config)
        config.registry_config, config._registry = registry, None  # RepoConfig builds `registry` lazily
        first = FeatureStore(config=config, repo_path=str(settings.feature_repo))
    apply_features(first, settings.feature_repo)
    second = FeatureStore(config=first.config, repo_path=str(settings.feature_repo))
    for store in (first, second):
        store.registry.list_feature_views(store.project)  # load (and cache) the registry as it is now
    return first, second


def _record_from_stale_copies(stores: tuple[FeatureStore, FeatureStore], end: datetime) -> dict[str, datetime | None]:
    """Each store records a window for its own view, the second from its copy read before the first wrote."""
    views = BATCH_VIEWS[:2]
    feature_views = [
        store.registry.get_feature_view(view, store.project) for store, view in zip(stores, views, strict=True)
    ]
    for store, feature_view in zip(stores, feature_views, strict=True):
        store.registry.apply_materialization(feature_view, store.project, end - timedelta(days=1), end)
    fresh = FeatureStore(config=stores[0].config, repo_path=str(stores[0].repo_path))
    return {view: fresh.registry.get_feature_view(view, fresh.project).most_recent_end_time for view in views}


def test_sql_registry_keeps_windows_recorded_by_stores_with_stale_copies(tmp_path, redis_db, restore_feast_environment):
    settings = make_settings(tmp_path / "state", redis_db)
    generate_data(settings.data_dir, customers=200, months=6, end=datetime.now(UTC), seed=3)
    end = datetime.now(UTC).replace(microsecond=0)

    recorded = _record_from_stale_copies(_stale_stores(settings, None), end)  # the repo's SQL registry
    assert recorded == {view: end for view in BATCH_VIEWS[:2]}

    # Control: Feast's file registry rewrites the whole file from each store's copy, so one of the two
    # windows is lost: the check above can fail. `thread` cache mode: no refresh on the file's mtime, so
    # the second copy stays stale as it does for writers racing between read and write (sync mode only
    # narrows that window; two threads lost a window in about half of our tries).
    file_registry = RegistryConfig(
        registry_type="file", path=str(tmp_path / "registry.pb"), cache_ttl_seconds=60, cache_mode="thread"
    )
    lost = _record_from_stale_copies(_stale_stores(settings, file_registry), end)
    assert sorted(end_time == end for end_time in lost.values()) == [False, True], lost
