"""`mlstack up | status | down` as a user runs them: real Prefect and MLflow servers, a worker, embedded Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from mlflow import MlflowClient

from mlstack.features.online_store import EmbeddedRedis
from mlstack.processes import free_port, port_free
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.stack import components
from mlstack.stack.local import stop_stack

pytestmark = pytest.mark.integration

# Configuration that would point the stack elsewhere than its own temp state (an earlier test in
# this process may have left PREFECT_HOME set: the CLI exports the stack environment in-process).
_OUTSIDE = ("PREFECT_API_URL", "PREFECT_HOME", "MLSTACK_REDIS_URL", "MLSTACK_MLFLOW_TRACKING_URI", "MLSTACK_WORK_POOL")


def _mlstack(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if key not in _OUTSIDE}
    return subprocess.run(
        [sys.executable, "-m", "mlstack", *args],
        env={**base, **env, "COLUMNS": "250"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def isolated_stack(tmp_path: Path):
    """Environment and settings of a stack in its own state dir on free ports; everything stopped after."""
    ports = {
        "prefect_port": free_port(),
        "mlflow_port": free_port(),
        "service_port": free_port(),
    }
    settings = Settings(state_dir=tmp_path / "state", **ports)
    env = {
        "MLSTACK_STATE_DIR": str(settings.state_dir),
        **{f"MLSTACK_{key.upper()}": str(port) for key, port in ports.items()},
    }
    yield env, settings
    stop_stack(settings)  # whatever a failed assertion left running


def _state(settings: Settings, name: str) -> dict:
    return json.loads((settings.state_dir / "stack" / f"{name}.json").read_text())


def _row(output: str, component: str) -> str:
    """The table line of `component` in `mlstack up`/`status` output."""
    lines = [line for line in output.splitlines() if f" {component} " in line]
    assert lines, f"no row for {component} in:\n{output}"
    return lines[0]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_up_starts_the_stack_without_a_champion_reuses_it_and_down_stops_it(isolated_stack):
    env, settings = isolated_stack
    # As after `import feast` in the caller: a temp dir that dies with it must not reach flow runs.
    up = _mlstack("up", env={**env, "PROMETHEUS_MULTIPROC_DIR": "/tmp/feast_metrics_gone"})
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert "Traceback" not in up.stderr
    assert "service not started: no @champion yet" in up.stdout  # no model: the rest starts anyway
    assert "mlstack bootstrap" in up.stdout
    prefect_url = f"http://127.0.0.1:{settings.prefect_port}"
    mlflow_url = f"http://127.0.0.1:{settings.mlflow_port}"
    assert f"Prefect UI: {prefect_url}" in up.stdout
    assert f"MLflow UI (registered model): {mlflow_url}/#/models/{settings.model_name}" in up.stdout

    # Every component answers its own health check.
    assert httpx.get(f"{prefect_url}/api/health", timeout=5).json() is True
    assert httpx.get(f"{mlflow_url}/health", timeout=5).status_code == 200
    assert EmbeddedRedis(settings.redis_dir, settings).is_running()

    # The deployments of prefect.yaml are registered on this server, on the pool, run from this checkout.
    declared_list = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    declared = {d["name"] for d in declared_list}  # names repeat across flows ("daily"): count the list below
    deployments = httpx.post(f"{prefect_url}/api/deployments/filter", json={}, timeout=10).json()
    assert {d["name"] for d in deployments} == declared and len(deployments) == len(declared_list)
    for deployment in deployments:
        assert deployment["work_pool_name"] == settings.work_pool
        assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
            "directory": str(PROJECT_ROOT)
        }
    automations = httpx.post(f"{prefect_url}/api/automations/filter", json={}, timeout=10).json()
    assert any(a["name"].startswith("weekly-and-on-drift") for a in automations)  # the drift trigger

    # A worker polls the pool, and flow runs it starts will see this stack's state dir.
    worker = _state(settings, "prefect-worker")
    workers = httpx.post(f"{prefect_url}/api/work_pools/{settings.work_pool}/workers/filter", json={}, timeout=10)
    assert {"name": worker["extra"]["worker_name"], "status": "ONLINE"} in [
        {"name": w["name"], "status": w["status"]} for w in workers.json()
    ]
    worker_env = psutil.Process(worker["pid"]).environ()
    assert worker_env["MLSTACK_STATE_DIR"] == str(settings.state_dir.resolve())
    assert worker_env["PREFECT_API_URL"] == f"{prefect_url}/api"
    assert worker_env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PROMETHEUS_MULTIPROC_DIR" not in worker_env
    # The MLflow server's webhook for @champion moves points at the receiver `up` started.
    receiver = _state(settings, "mlflow-webhooks")
    assert httpx.get(f"{receiver['url']}/health", timeout=5).json() == {"status": "ok"}
    hooks = MlflowClient(mlflow_url, mlflow_url).list_webhooks()
    assert [(h.name, h.url, [str(e) for e in h.events]) for h in hooks] == [
        ("mlstack-champion", f"{receiver['url']}/mlflow-webhook", ["model_version_alias.created"])
    ]
    for name in ("prefect-server", "prefect-worker", "mlflow-server", "mlflow-webhooks"):
        state = _state(settings, name)
        assert {"pid", "url", "log", "started_at"} <= state.keys()
        assert Path(state["log"]).is_file()
    assert (settings.state_dir / "prefect" / "prefect.db").is_file()  # Prefect's database is in the state dir

    status = _mlstack("status", env=env)
    assert status.returncode == 0, status.stderr[-3000:]
    for component in ("redis", "prefect-server", "prefect-worker", "mlflow-server", "mlflow-webhooks"):
        row = _row(status.stdout, component)
        assert " running " in row and " healthy " in row, row
    assert f"{len(declared_list)} deployments" in _row(status.stdout, "prefect-server")
    assert " stopped " in _row(status.stdout, "service")
    assert "@champion = none" in status.stdout  # what status showed before is still there

    pids = {
        name: _state(settings, name)["pid"]
        for name in ("prefect-server", "prefect-worker", "mlflow-server", "mlflow-webhooks")
    }
    redis_pid = EmbeddedRedis(settings.redis_dir, settings).pid()
    again = _mlstack("up", "--no-service", env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {name: _state(settings, name)["pid"] for name in pids} == pids  # reused, not restarted
    assert EmbeddedRedis(settings.redis_dir, settings).pid() == redis_pid

    down = _mlstack("down", env=env)
    assert down.returncode == 0, down.stderr[-3000:]
    for name in ("prefect-worker", "prefect-server", "mlflow-webhooks", "mlflow-server", "redis"):
        assert f"{name}: stopped" in down.stdout
    for pid in [*pids.values(), redis_pid]:
        assert _gone(pid), pid
    for port in (settings.prefect_port, settings.mlflow_port):
        assert port_free(port), port
    assert not list((settings.state_dir / "stack").glob("*.json"))

    twice = _mlstack("down", env=env)
    assert twice.returncode == 0
    assert "stopped" not in twice.stdout.replace("was not running", "")  # idempotent: nothing left to stop
    after = _mlstack("status", env=env)
    for component in ("prefect-server", "prefect-worker", "mlflow-server"):
        assert " stopped " in _row(after.stdout, component)


def test_up_names_the_setting_of_a_taken_port_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = tmp_path / "state"
        result = _mlstack(
            "up",
            "--no-mlflow",
            env={"MLSTACK_STATE_DIR": str(state), "MLSTACK_PREFECT_PORT": str(port)},
            timeout=120,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "MLSTACK_PREFECT_PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (state / "redis" / "server.json").exists()  # failed before anything started
    assert not list((state / "stack").glob("*.json"))


def test_stop_kills_a_process_group_that_ignores_sigterm(tmp_path):
    settings = Settings(state_dir=tmp_path)
    # A parent that ignores SIGTERM with a child that does too: both must be gone after the timeout.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); time.sleep(600)"
    )
    process = components.launch_process(settings, "stubborn", [sys.executable, "-c", code], "-")
    deadline = time.monotonic() + 30
    while len(psutil.Process(process.pid).children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    child = psutil.Process(process.pid).children()[0].pid
    assert components.running_process(settings, "stubborn") == process

    assert components.stop_process(settings, "stubborn", timeout=1) is True
    assert _gone(process.pid) and _gone(child)
    assert components.running_process(settings, "stubborn") is None
    assert components.stop_process(settings, "stubborn") is False  # idempotent


def test_a_recorded_pid_reused_by_another_process_is_not_the_component(tmp_path):
    settings = Settings(state_dir=tmp_path)
    (tmp_path / "stack").mkdir()
    # Our own pid is alive but was not started by the stack: its start time differs from the record.
    record = {"pid": os.getpid(), "url": "-", "log": "-", "started_at": "-", "create_time": 1.0}
    (tmp_path / "stack" / "ghost.json").write_text(json.dumps(record))
    assert components.running_process(settings, "ghost") is None
    assert components.stop_process(settings, "ghost", sig=signal.SIGTERM) is False  # never signals a stranger
