"""Feast's own CLI on this repo, as a Feast user runs it: `eval "$(mlstack env)"`, then plain `feast`.

Real subprocesses with nothing inherited but PATH (``env -i``), a real Redis, a real SQL registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlstack.features.store import BATCH_VIEWS
from mlstack.settings import PROJECT_ROOT
from tests.support.factories import redis_url

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PATH_ONLY = {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"}


def _mlstack(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlstack", *args],
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _shell(script: str) -> subprocess.CompletedProcess[str]:
    """`script` in a bash that starts from an empty environment (PATH only), in the repo root."""
    return subprocess.run(
        ["bash", "-c", script], env=PATH_ONLY, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def generated_state(tmp_path_factory, redis_server):
    """A state dir with generated data, the Feast repo not applied yet; (its MLSTACK_* env, `mlstack env` output)."""
    target = redis_server.with_db(14)
    state = tmp_path_factory.mktemp("feast-cli") / "state"
    env = {"MLSTACK_STATE_DIR": str(state), "MLSTACK_REDIS_URL": redis_url(target)}
    generated = _mlstack("data", "generate", "--customers", "300", "--months", "12", env=env)
    assert generated.returncode == 0, generated.stderr[-3000:]
    exports = _mlstack("env", env=env)
    assert exports.returncode == 0, exports.stderr[-3000:]
    return env, exports.stdout


def test_feast_plan_apply_and_list_work_with_only_the_mlstack_env(generated_state):
    _, exports = generated_state
    planned = _shell(f"{exports}\nfeast -c feature_store plan")
    assert planned.returncode == 0, planned.stderr[-3000:]
    for view in BATCH_VIEWS:  # an empty registry: the plan names every view it would create
        assert view in planned.stdout, planned.stdout

    applied = _shell(f"{exports}\nfeast -c feature_store apply")
    assert applied.returncode == 0, applied.stderr[-3000:]

    listed = _shell(f"{exports}\nfeast -c feature_store feature-views list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    for view in BATCH_VIEWS:
        assert view in listed.stdout, listed.stdout

    replanned = _shell(f"{exports}\nfeast -c feature_store plan")
    assert replanned.returncode == 0, replanned.stderr[-3000:]
    assert "No changes to registry" in replanned.stdout  # the same SQL registry the apply wrote


def test_feast_without_mlstack_env_fails_on_the_unset_variables(generated_state):
    """The negative control: the same command without the exports is the error a new user saw."""
    result = _shell("feast -c feature_store feature-views list")
    assert result.returncode != 0
    assert "FEAST_MLSTACK_" in result.stderr + result.stdout


def test_mlstack_feast_runs_feast_with_the_stack_environment(generated_state):
    env, _ = generated_state
    result = _mlstack("feast", "--", "-c", "feature_store", "plan", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "feature view" in result.stdout.lower() or "No changes to registry" in result.stdout, result.stdout
