"""The Ray engine for features (a real local Ray, 2 CPUs): the same training sets and Redis bytes as the local
engine, and materialisation that fails loudly (no window recorded) when Redis dies, refuses or loses writes.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore

from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.features import ray_engine
from mlstack.features.materialization import MaterializationError, materialize_arrow, write_latest_rows
from mlstack.features.online_store import RedisTarget, make_client
from mlstack.features.store import (
    BATCH_VIEWS,
    get_historical_features,
    get_store,
    materialize_feature_view,
    materialize_view,
)
from mlstack.processes import free_port
from mlstack.settings import Settings
from tests.support.binaries import require_binary
from tests.support.factories import fresh_db, make_settings
from tests.support.feast_repo import (
    FeastRepo,
    applied_repo,
    differences,
    dump,
    find_mismatches,
    generated_data_dir,
    point_in_time_reference,
    project_store,
)

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("restore_feast_environment")]


# --------------------------------------------------------------------------- point-in-time training sets


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisTarget) -> Iterator[FeastRepo]:
    with applied_repo(tmp_path_factory.mktemp("ray-pit"), redis_server) as applied:
        yield applied


def entity_frame(repo: FeastRepo) -> pd.DataFrame:
    """Every application, plus built rows: before any credit snapshot, past its TTL by 1 µs (nulls), and inside it."""
    columns = ["customer_id", "zipcode", "event_timestamp", "loan_amount", "loan_term_months", "loan_purpose"]
    apps = pd.read_parquet(repo.settings.data_dir / LOAN_APPLICATIONS_FILE)[columns]
    credit = repo.views["credit_history"]
    first = credit.snapshots.sort_values("event_timestamp").groupby("customer_id").head(1).head(20)
    last = credit.snapshots.sort_values("event_timestamp").groupby("customer_id").tail(1).head(20)
    zipcodes = apps.groupby("customer_id")["zipcode"].first()
    edge = [
        first.assign(event_timestamp=first["event_timestamp"] - pd.Timedelta(days=1)),
        last.assign(event_timestamp=last["event_timestamp"] + credit.ttl + pd.Timedelta(microseconds=1)),
        last.assign(event_timestamp=last["event_timestamp"] + credit.ttl),  # inside the TTL: values
    ]
    built = pd.concat(edge)[["customer_id", "event_timestamp"]].assign(
        zipcode=lambda df: df["customer_id"].map(zipcodes).fillna("00000"),
        loan_amount=9_000.0,
        loan_term_months=36,
        loan_purpose="car",
    )
    frame = pd.concat([apps, built[columns]], ignore_index=True)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    frame["row_key"] = np.arange(len(frame), dtype=np.int64)
    return frame


def ray_store(repo: FeastRepo) -> FeatureStore:
    """The repo's store (same registry and data) configured for the Ray engine."""
    return get_store(repo.settings.model_copy(update={"compute_engine": "ray"}), repo.target)


def test_ray_training_set_equals_duckdb_value_for_value(repo, ray_cluster, monkeypatch):
    monkeypatch.setattr(ray_engine, "MIN_JOIN_SHARD_ROWS", 500)  # several shards from test-sized data
    entities = entity_frame(repo)
    assert len(entities) // 500 >= 2 and ray_cluster.cpus == 2  # the join really is cut in two shards
    local = get_historical_features(get_store(repo.settings, repo.target), entities.copy())
    on_ray = get_historical_features(ray_store(repo), entities.copy())

    assert len(on_ray) == len(local) == len(entities)  # every row kept, none doubled
    assert dict(on_ray.dtypes) == dict(local.dtypes)
    ordered = [frame.sort_values("row_key").reset_index(drop=True) for frame in (local, on_ray)]
    pd.testing.assert_frame_equal(ordered[1], ordered[0], check_exact=True)

    # Not vacuous: the data holds rows with no value within TTL (nulls), and they match the reference.
    credit = repo.views["credit_history"]
    assert on_ray[credit.features].isna().all(axis=1).sum() >= 40
    expected = point_in_time_reference(entities, credit)
    mismatches = find_mismatches(expected, on_ray.set_index("row_key"), credit.features)
    assert mismatches.empty, mismatches.head(10).to_string()


def test_feasts_own_ray_store_still_ignores_ttl_and_truncates_timestamps(repo, ray_cluster, tmp_path):
    """Why mlstack does not join through Feast's Ray offline store: if this fails, Feast fixed it; reconsider."""
    store = ray_store(repo)
    assert store.config.offline_store.type == "ray"
    store.config.offline_store.storage_path = str(tmp_path / "staging")  # unset on purpose in feature_store.yaml
    entities = entity_frame(repo).tail(60)  # the built rows: 20 before, 20 past, 20 inside the TTL
    service = store.get_feature_service("credit_risk_v1")
    theirs = store.get_historical_features(entity_df=entities.copy(), features=service).to_df()
    ours = get_historical_features(ray_store(repo), entities.copy())
    credit = repo.views["credit_history"].features
    past_ttl = entities["row_key"].iloc[20:40]
    assert ours.set_index("row_key").loc[past_ttl, credit].isna().all().all()
    assert theirs.set_index("row_key").loc[past_ttl, credit].notna().all().all()  # stale values joined
    assert (theirs["event_timestamp"].dt.microsecond == 0).all()
    assert (ours["event_timestamp"].dt.microsecond != 0).any()


# --------------------------------------------------------------------------- materialisation


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated data ending today, shared by this module's project-repo tests."""
    return generated_data_dir(tmp_path_factory.mktemp("ray-materialize-data"), customers=3000, seed=5)


def recorded_end(store: FeatureStore, view: str) -> datetime | None:
    """The view's last recorded window end, read from the registry itself (not the store's cache)."""
    return store.registry.get_feature_view(view, store.project, allow_cache=False).most_recent_end_time


def test_ray_materialisation_leaves_redis_byte_identical_to_local(tmp_path, redis_server, data_dir, ray_cluster):
    local_db, ray_db = fresh_db(redis_server), fresh_db(redis_server)
    local = project_store(tmp_path / "local", local_db, data_dir)
    on_ray = project_store(tmp_path / "ray", ray_db, data_dir, compute_engine="ray")
    assert ray_engine.on_ray(on_ray) and not ray_engine.on_ray(local)
    end = datetime.now(UTC)
    theirs = [materialize_view(local, view, end) for view in BATCH_VIEWS]
    ours = [materialize_view(on_ray, view, end) for view in BATCH_VIEWS]
    assert [r.rows for r in ours] == [r.rows for r in theirs] and all(r.rows > 0 for r in ours)
    expected = dump(local_db)
    assert len(expected) > 3000
    assert differences(expected, dump(ray_db)) == []
    assert all(recorded_end(on_ray, view) == end for view in BATCH_VIEWS)
    for target in (local_db, ray_db):
        make_client(target, Settings()).flushdb()


@dataclass
class PrivateRedis:
    """A redis-server of this test's own (no persistence), which the test may kill and start again."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> RedisTarget:
        return RedisTarget("127.0.0.1", self.port)

    def start(self) -> None:
        binary = require_binary("redis-server", "redis-server")
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([binary, *arguments, "--dir", str(self.directory)], stdout=subprocess.DEVNULL)
        client = make_client(self.target, Settings())
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, free_port())
    server.start()
    yield server
    server.kill()


def test_ray_materialisation_fails_when_redis_is_killed_mid_write_and_reruns(
    tmp_path, private_redis, data_dir, ray_cluster
):
    # Small chunks: thousands of round trips from the Ray workers, so the kill lands mid-write.
    settings = make_settings(tmp_path / "state", private_redis.target, compute_engine="ray", materialize_batch_size=5)
    store = project_store(tmp_path / "state", private_redis.target, data_dir, **_fields(settings))
    client = make_client(private_redis.target, Settings())
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = materialize_feature_view(settings, "customer_profile", datetime.now(UTC))
        except Exception as exc:  # reported to the test thread below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 300
    while client.dbsize() < 10:  # the Ray workers are writing
        assert worker.is_alive(), f"materialisation ended before the kill: {outcome}"
        assert time.monotonic() < deadline, "materialisation never started writing"
        time.sleep(0.01)
    private_redis.kill()
    worker.join(timeout=300)
    assert not worker.is_alive()

    error = outcome.get("error")
    assert isinstance(error, MaterializationError), outcome
    message = str(error)
    assert "'customer_profile' failed after" in message and "was not recorded" in message
    assert "connection" in message.lower(), message
    assert error.retryable
    assert recorded_end(store, "customer_profile") is None

    private_redis.start()  # empty: no persistence
    rerun = materialize_feature_view(settings, "customer_profile", datetime.now(UTC))
    assert rerun.rows > 2000
    assert client.dbsize() == rerun.rows
    assert recorded_end(store, "customer_profile") == rerun.end


def test_ray_materialisation_refused_by_redis_records_no_window(tmp_path, private_redis, data_dir, ray_cluster):
    store = project_store(tmp_path / "state", private_redis.target, data_dir, compute_engine="ray")
    client = make_client(private_redis.target, Settings())
    client.ping()  # answers
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 100_000)

    with pytest.raises(MaterializationError) as raised:
        materialize_view(store, "customer_profile", datetime.now(UTC))
    message = str(raised.value)
    assert "'customer_profile' failed after" in message and "OutOfMemoryError" in message, message
    assert not raised.value.retryable
    assert recorded_end(store, "customer_profile") is None

    client.config_set("maxmemory", 0)
    assert materialize_view(store, "customer_profile", datetime.now(UTC)).rows > 2000


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_materialisation_that_redis_loses_after_acknowledging_fails_verification(
    tmp_path, redis_db, data_dir, ray_cluster, engine
):
    store = project_store(tmp_path / "state", redis_db, data_dir, compute_engine=engine)
    client = make_client(redis_db, Settings())
    write = ray_engine.write_pass() if engine == "ray" else write_latest_rows

    def losing_write(*args):  # what a restart without persistence does after the writes were acknowledged
        written = write(*args)
        lost = written.keys.slice(0, 7).to_pylist()
        client.delete(*lost)
        client.hdel(written.keys[7].as_py(), b"_ts:customer_profile")
        return written

    with pytest.raises(MaterializationError) as raised:
        materialize_arrow(store, "customer_profile", datetime.now(UTC), write=losing_write)
    message = str(raised.value)
    assert "Redis holds" in message and "7 keys missing, 1 with another or no timestamp" in message, message
    assert recorded_end(store, "customer_profile") is None

    done = materialize_arrow(store, "customer_profile", datetime.now(UTC))  # a rerun rewrites the window
    assert done.verified is not None and done.verified.found == done.rows_written == done.rows > 2000


def _fields(settings: Settings) -> dict[str, object]:
    return {"compute_engine": settings.compute_engine, "materialize_batch_size": settings.materialize_batch_size}
