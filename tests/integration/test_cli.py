"""The `mlstack` command as a user runs it: real subprocesses, real Redis, Prefect in ephemeral mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from mlstack.features.online_store import make_client
from mlstack.features.store import BATCH_VIEWS
from mlstack.settings import PROJECT_ROOT, Settings
from tests.support.factories import redis_url

pytestmark = pytest.mark.integration


def _mlstack(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlstack", *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_generates_and_materializes_through_the_prefect_flow(tmp_path, redis_db):
    env = {"MLSTACK_STATE_DIR": str(tmp_path / "state"), "MLSTACK_REDIS_URL": redis_url(redis_db)}
    generated = _mlstack("data", "generate", "--customers", "400", "--months", "12", env=env)
    assert generated.returncode == 0, generated.stderr
    assert "loan_applications" in generated.stdout

    materialized = _mlstack("features", "materialize", env=env, timeout=600)
    assert materialized.returncode == 0, materialized.stderr[-3000:]
    assert "materialize-features" in materialized.stdout + materialized.stderr  # the Prefect flow ran
    assert "Finished in state Completed" in materialized.stdout + materialized.stderr
    keys = make_client(redis_db, Settings()).dbsize()
    assert keys >= 300  # customers with a snapshot inside TTL, plus zipcodes
    assert (tmp_path / "state" / "prefect").is_dir()  # Prefect's state stays under the state dir

    shown = _mlstack("features", "show", "--customer-id", "1", "--customer-id", "2", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "loan_to_income" in shown.stdout

    regenerated = _mlstack("data", "generate", "--customers", "300", "--months", "12", "--seed", "5", env=env)
    assert regenerated.returncode == 0, regenerated.stderr
    assert "cleared the Feast registry" in regenerated.stdout
    assert make_client(redis_db, Settings()).dbsize() == 0  # no vectors of the old data survive


@pytest.mark.timeout(120, func_only=True)  # import time dominates; no 15 s Redis hang on top
def test_cli_reports_dead_redis_clearly_and_fast(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "data").mkdir()
    result = _mlstack(
        "features",
        "apply",
        env={"MLSTACK_STATE_DIR": str(tmp_path), "MLSTACK_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )
    assert result.returncode == 1
    assert "not reachable" in result.stderr or "offline data missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_the_missing_step_without_data(tmp_path, redis_db):
    result = _mlstack(
        "features", "apply", env={"MLSTACK_STATE_DIR": str(tmp_path), "MLSTACK_REDIS_URL": redis_url(redis_db)}
    )
    assert result.returncode == 1
    assert "mlstack data generate" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("writer", ["arrow", "feast"])
def test_cli_materialize_into_a_full_redis_fails_in_one_line_and_records_no_window(tmp_path, writer):
    """Issue 15: Redis at maxmemory ended in an exception panel quoting the pipeline's binary key bytes."""
    from mlstack.features.online_store import EmbeddedRedis
    from mlstack.features.store import get_store
    from tests.support.factories import make_settings

    server = EmbeddedRedis(tmp_path / "redis", Settings())  # private: this test starves it of memory
    target = server.ensure_running()
    try:
        env = {
            "MLSTACK_STATE_DIR": str(tmp_path / "state"),
            "MLSTACK_REDIS_URL": redis_url(target),
            "MLSTACK_MATERIALIZE_WRITER": writer,
        }
        generated = _mlstack("data", "generate", "--customers", "2000", "--months", "12", env=env)
        assert generated.returncode == 0, generated.stderr
        client = make_client(target, Settings())
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 150_000)  # a few hundred rows

        result = _mlstack("features", "materialize", env=env, timeout=600)
        client.config_set("maxmemory", 0)
        assert result.returncode == 1, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr[-3000:]
        [line] = errors
        assert "feature views failed (customer_profile: materialising 'customer_profile' failed after" in line
        assert "rows were written to Redis" in line and "OutOfMemoryError" in line and "was not recorded" in line
        written = int(line.split("failed after ", 1)[1].split(" rows", 1)[0].replace(",", ""))
        keys = client.dbsize()
        assert 0 < keys < 2000  # Redis took some rows, then refused
        if writer == "arrow":
            assert written == keys  # every acknowledged row, counted exactly
        else:
            assert written <= keys and "in flight may be written in part" in line  # Feast reports one batch
        output = result.stdout + result.stderr
        for dump in ("\\x", "\ufffd", "Command # ", "HSET"):  # no pipeline command, no binary key bytes
            assert dump not in output, dump
        # No retry of a refused write: each view is tried once (the flow runs every view to its end).
        assert output.count("Materializing 1 feature views") <= len(BATCH_VIEWS)

        settings = make_settings(tmp_path / "state", target, materialize_writer=writer)
        assert get_store(settings, target).get_feature_view("customer_profile").most_recent_end_time is None
        client.close()
    finally:
        server.stop()
