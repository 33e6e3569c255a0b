"""The Ray engine on an existing cluster: two nodes started with `ray start`, reached as the Kubernetes overlay does.

`external_ray_cluster` (tests/support/ray_cluster.py) runs a head and a second node as separate processes, one
CPU each, started once for the module. The tests point MLSTACK_RAY_ADDRESS at its Ray Client address
(`ray://127.0.0.1:<port>`, what `infra/k8s/components/ray` gives the flow runs) and, last, at its GCS address
(`127.0.0.1:<port>`), and check the same answers as the local engine: the training set value for value, Redis
byte for byte, the model within the tolerances of test_ray_training.py. That the work really ran on both
nodes: the materialisation shards report their node ids; Ray Train's two 1-CPU workers cannot share a node
with 1 CPU. Both nodes run on this machine, so they share a filesystem: what a multi-machine cluster needs
beyond that (shared storage for the state dir) is stated in docs/operations.md, not tested here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pandas as pd
import pytest

from mlstack.compute import ComputeEngineError, ensure_ray, shutdown_ray
from mlstack.features import ray_engine
from mlstack.features.online_store import RedisTarget, make_client
from mlstack.features.store import BATCH_VIEWS, get_historical_features, get_store, materialize_view
from mlstack.processes import free_port
from mlstack.settings import Settings
from mlstack.training import model_input
from mlstack.training import steps as training_steps
from mlstack.training.dataset import split_by_time
from mlstack.training.distributed import RUN_PREFIX
from tests.support.factories import fresh_db
from tests.support.feast_repo import FeastRepo, applied_repo, differences, dump, project_store
from tests.support.ray_cluster import NODE_CPUS, alive_nodes
from tests.support.training_data import FAST_PARAMS, RAY_AUC_TOLERANCE, RAY_LOG_LOSS_TOLERANCE, synthetic_applications

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("restore_feast_environment")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisTarget) -> Iterator[FeastRepo]:
    """The applied repo over small generated data (tests/support/feast_repo.py), on the local engine."""
    with applied_repo(tmp_path_factory.mktemp("ray-cluster-repo"), redis_server) as applied:
        yield applied


def on_cluster(settings: Settings, address: str) -> Settings:
    """The same settings on the Ray engine, pointed at an existing cluster."""
    return settings.model_copy(update={"compute_engine": "ray", "ray_address": address})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_address_where_no_ray_listens_fails_naming_the_setting(tmp_path, scheme):
    import ray

    shutdown_ray()  # ensure_ray reuses a live connection: this test needs none
    address = f"{scheme}127.0.0.1:{free_port()}"  # nothing listens: refused at once, Ray's retries never start
    with pytest.raises(ComputeEngineError) as raised:
        ensure_ray(Settings(state_dir=tmp_path, compute_engine="ray", ray_address=address))
    message = str(raised.value)
    assert f"cannot start or reach Ray ({address})" in message and "MLSTACK_RAY_ADDRESS" in message, message
    assert not ray.is_initialized()


# --------------------------------------------------------------------------- through Ray Client (ray://)


def test_ray_client_reaches_both_nodes_of_the_cluster(external_ray_cluster, tmp_path):
    settings = Settings(state_dir=tmp_path, compute_engine="ray", ray_address=external_ray_cluster.client_address)
    connection = ensure_ray(settings)
    assert not connection.started_locally
    assert connection.cpus == 2 * NODE_CPUS  # the cluster's CPUs, not this machine's
    nodes = alive_nodes(external_ray_cluster)
    assert len(nodes) == 2 and all(node["Resources"]["CPU"] == NODE_CPUS for node in nodes)


def test_training_set_through_ray_client_equals_duckdb(repo, external_ray_cluster, monkeypatch):
    monkeypatch.setattr(ray_engine, "MIN_JOIN_SHARD_ROWS", 500)  # one shard per node from test-sized data
    entities = repo.applications[
        ["customer_id", "zipcode", "event_timestamp", "loan_amount", "loan_term_months", "loan_purpose"]
    ].assign(row_key=lambda frame: range(len(frame)))
    assert len(entities) >= 2 * 500
    local = get_historical_features(get_store(repo.settings, repo.target), entities.copy())
    store = get_store(on_cluster(repo.settings, external_ray_cluster.client_address), repo.target)
    assert ray_engine.on_ray(store)
    on_ray = get_historical_features(store, entities.copy())

    assert len(on_ray) == len(local) == len(entities)
    ordered = [frame.sort_values("row_key").reset_index(drop=True) for frame in (local, on_ray)]
    pd.testing.assert_frame_equal(ordered[1], ordered[0], check_exact=True)
    assert local[repo.views["credit_history"].features].notna().any().all()  # not a frame of nulls


def materialise_both_ways(
    repo: FeastRepo, redis_server: RedisTarget, tmp_path, address: str, views: tuple[str, ...]
) -> tuple[list[int], list[int], list[tuple[bytes, bytes | None, object, object]], int]:
    """The same window materialised by the local engine and by the cluster, each into its own Redis DB.

    Returns the rows per view (local, cluster), the differences between the two DBs and the keys compared.
    """
    local_db, ray_db = fresh_db(redis_server), fresh_db(redis_server)
    local = project_store(tmp_path / "local", local_db, repo.settings.data_dir)
    on_ray = project_store(tmp_path / "ray", ray_db, repo.settings.data_dir, compute_engine="ray", ray_address=address)
    assert ray_engine.on_ray(on_ray) and not ray_engine.on_ray(local)
    end = datetime.now(UTC)
    theirs = [materialize_view(local, view, end).rows for view in views]
    ours = [materialize_view(on_ray, view, end).rows for view in views]
    expected = dump(local_db)
    found = differences(expected, dump(ray_db))
    for target in (local_db, ray_db):
        make_client(target, Settings()).flushdb()
    return theirs, ours, found, len(expected)


def test_materialisation_through_ray_client_matches_local_and_ran_on_both_nodes(
    repo, redis_server, external_ray_cluster, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=ray_engine.__name__)
    theirs, ours, found, keys = materialise_both_ways(
        repo, redis_server, tmp_path, external_ray_cluster.client_address, BATCH_VIEWS
    )
    assert ours == theirs and all(rows > 0 for rows in ours)
    assert keys > 1000
    assert found == []
    # Every view's shards (one per cluster CPU) reported their node: together, both of the cluster's nodes.
    written = [record.args for record in caplog.records if "shard(s) written on" in record.getMessage()]
    assert len(written) == len(BATCH_VIEWS), caplog.text
    nodes = {node for args in written for node in str(args[-1]).split(", ")}
    assert nodes == {node["NodeID"] for node in alive_nodes(external_ray_cluster)}, caplog.text


def test_lightgbm_through_ray_client_on_two_nodes_is_within_tolerance_of_local(external_ray_cluster, tmp_path):
    # The synthetic rows of the training unit tests: a holdout big enough for the tolerances (the Feast repo's
    # 1,500 customers leave ~100 holdout rows, where two good fits differ by more than 0.02 of AUC).
    parts = split_by_time(synthetic_applications(6000, seed=4), 0.15, 0.15, 0.15)
    settings = Settings(state_dir=tmp_path, compute_engine="ray", ray_address=external_ray_cluster.client_address)
    # 2 workers of 1 CPU on 2 nodes of 1 CPU: Ray Train places one worker on each node, or none.
    on_ray = training_steps.train_retrained(settings.model_copy(update={"ray_train_workers": 2}), parts, FAST_PARAMS)
    local = training_steps.train_retrained(settings.model_copy(update={"compute_engine": "local"}), parts, FAST_PARAMS)

    assert on_ray.engine.name == "ray" and on_ray.engine.workers == 2 and local.engine.name == "local"
    differences = (on_ray.metrics.log_loss - local.metrics.log_loss, on_ray.metrics.roc_auc - local.metrics.roc_auc)
    assert abs(differences[0]) <= RAY_LOG_LOSS_TOLERANCE, differences
    assert abs(differences[1]) <= RAY_AUC_TOLERANCE, differences
    holdout = model_input.encode(parts.holdout)
    # Really distributed (per-worker histogram bins), not a local fit behind the engine's name.
    assert (on_ray.booster.predict(holdout) != local.booster.predict(holdout)).any()
    assert not list(settings.runs_dir.glob(f"{RUN_PREFIX}*")), "Ray Train's run storage was left behind"


# --------------------------------------------------------------------------- through the GCS address


def test_materialisation_through_the_gcs_address_matches_local(repo, redis_server, external_ray_cluster, tmp_path):
    shutdown_ray()  # drop the module's Ray Client connection: this one joins as a driver of the cluster
    try:
        connection = ensure_ray(on_cluster(Settings(state_dir=tmp_path), external_ray_cluster.gcs_address))
        assert not connection.started_locally and connection.cpus == 2 * NODE_CPUS
        theirs, ours, found, keys = materialise_both_ways(
            repo, redis_server, tmp_path, external_ray_cluster.gcs_address, BATCH_VIEWS[:1]
        )
    finally:
        shutdown_ray()
    assert ours == theirs and ours[0] > 0 and keys > 0
    assert found == []
