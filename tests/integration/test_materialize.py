"""Materialisation into a real Redis: idempotent re-runs, and recovery from an interrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from mlstack.data.generator import generate_data
from mlstack.features.online_store import EmbeddedRedis, RedisTarget, make_client
from mlstack.features.store import BATCH_VIEWS, apply_features, get_online_features, get_store, materialize_view
from mlstack.settings import PROJECT_ROOT, Settings
from tests.support.factories import fresh_db, make_settings, redis_url


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Small offline data ending today, shared by the tests of this module (each has its own registry)."""
    state = tmp_path_factory.mktemp("materialize-data")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    generate_data(state / "data", customers=3000, months=12, end=today, seed=11)
    return state / "data"


def _settings(tmp_path, target: RedisTarget, data_dir, **overrides) -> Settings:
    settings = make_settings(tmp_path / "state", target, **overrides)
    (settings.state_dir).mkdir(parents=True, exist_ok=True)
    os.symlink(data_dir, settings.data_dir)
    return settings


def _dump(target: RedisTarget) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash in the DB, field by field: the bytes a reader would see."""
    client = make_client(target, Settings())
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


@pytest.mark.parametrize("skip_dedup", [True, False], ids=["skip-dedup", "dedup"])
def test_materialize_rerun_of_same_window_leaves_redis_identical(tmp_path, redis_db, data_dir, skip_dedup):
    settings = _settings(tmp_path, redis_db, data_dir, materialize_skip_dedup=skip_dedup)
    store = get_store(settings, redis_db)
    apply_features(store, settings.feature_repo)
    end = datetime.now(UTC)
    first = [materialize_view(store, view, end) for view in BATCH_VIEWS]
    assert all(result.rows > 0 for result in first), first
    before = _dump(redis_db)
    assert len(before) > 3000  # customers + zipcodes

    windows = {view: store.get_feature_view(view).materialization_intervals[-1] for view in BATCH_VIEWS}
    for view, (start, stop) in windows.items():
        store.materialize(start_date=start, end_date=stop, feature_views=[view])  # the same window again
    assert _dump(redis_db) == before

    again = [materialize_view(store, view, end) for view in BATCH_VIEWS]  # incremental: nothing new
    assert [result.rows for result in again] == [0, 0, 0]
    assert _dump(redis_db) == before


def test_materialize_interrupted_run_completes_on_rerun(tmp_path, redis_server, data_dir):
    interrupted, reference = fresh_db(redis_server), fresh_db(redis_server)
    settings = _settings(tmp_path, interrupted, data_dir, materialize_batch_size=25)
    script = textwrap.dedent(
        """
        from datetime import UTC, datetime
        from mlstack.features.store import apply_features, get_store, materialize_view
        from mlstack.settings import get_settings

        settings = get_settings()
        store = get_store(settings)
        apply_features(store, settings.feature_repo)
        materialize_view(store, "customer_profile", datetime.now(UTC))
        """
    )
    env = {
        **os.environ,
        "MLSTACK_STATE_DIR": str(settings.state_dir),
        "MLSTACK_REDIS_URL": redis_url(interrupted),
        "MLSTACK_MATERIALIZE_BATCH_SIZE": "25",  # a settings field: small batches to interrupt,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    client = make_client(interrupted, Settings())
    try:
        deadline = time.monotonic() + 120
        while client.dbsize() == 0:  # wait for the first written batch, then kill mid-run
            assert proc.poll() is None, "materialisation ended before it could be interrupted"
            assert time.monotonic() < deadline, "materialisation never started writing"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = client.dbsize()

    store = get_store(settings, interrupted)
    assert store.get_feature_view("customer_profile").most_recent_end_time is None  # window not recorded
    end = datetime.now(UTC)
    rerun = materialize_view(store, "customer_profile", end)
    assert rerun.rows > partial

    start, stop = store.get_feature_view("customer_profile").materialization_intervals[-1]
    assert stop == end and start < end - timedelta(days=80)
    clean_settings = settings.model_copy(update={"redis_url": redis_url(reference)})
    clean = get_store(clean_settings, reference)
    clean.materialize(start_date=start, end_date=stop, feature_views=["customer_profile"])
    assert _dump(interrupted) == _dump(reference)
    for target in (interrupted, reference):
        make_client(target, Settings()).flushdb()


# Bounded: redis-py defaults would block far longer on the hung server, and retry on the dead one.
@pytest.mark.timeout(30, func_only=True)
def test_feast_online_read_fails_fast_when_redis_is_dead_or_hung(tmp_path, data_dir):
    server = EmbeddedRedis(tmp_path / "redis", Settings())
    target = server.ensure_running()
    try:
        settings = _settings(tmp_path, target, data_dir)
        store = get_store(settings, target)
        apply_features(store, settings.feature_repo)
        row = [
            {"customer_id": 1, "zipcode": "00000", "loan_amount": 1.0, "loan_term_months": 36, "loan_purpose": "car"}
        ]
        get_online_features(store, row)  # healthy: answers

        os.kill(server.pid(), signal.SIGSTOP)  # hung: accepts nothing, answers nothing
        with pytest.raises(redis.TimeoutError):
            get_online_features(store, row)
    finally:
        pid = server.pid()
        if pid:
            os.kill(pid, signal.SIGCONT)
        server.stop()

    dead_store = get_store(settings, target)  # the server is gone now: connection refused
    with pytest.raises(redis.ConnectionError):
        get_online_features(dead_store, row)
