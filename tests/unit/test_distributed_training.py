"""The compute-engine switch of the main fit, and the Ray path's checks before it reaches Ray (no Ray here)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from mlstack import compute
from mlstack.compute import ComputeEngineError, check_reachable, ensure_ray, keep_uv_run_propagation_off
from mlstack.processes import free_port
from mlstack.settings import Settings
from mlstack.training import model_input
from mlstack.training.dataset import split_by_time, train_booster
from mlstack.training.distributed import (
    LOCAL,
    TrainingEngine,
    fit_booster,
    frame_arrays,
    model_frame,
    train_booster_on_ray,
    training_engine,
)
from tests.support.training_data import FAST_PARAMS, synthetic_applications


@pytest.fixture(scope="module")
def parts():
    return split_by_time(synthetic_applications(2000, seed=4), 0.15, 0.15, 0.15)


@pytest.fixture
def no_ray(monkeypatch):
    """`import ray` fails, as without the `ray` extra."""
    monkeypatch.setitem(sys.modules, "ray", None)


def test_local_engine_fits_exactly_the_local_booster(parts, tmp_path):
    booster = fit_booster(Settings(state_dir=tmp_path), parts, FAST_PARAMS)
    reference = train_booster(parts, FAST_PARAMS)
    matrix = model_input.encode(parts.holdout)
    np.testing.assert_array_equal(booster.predict(matrix), reference.predict(matrix))
    assert booster.best_iteration == reference.best_iteration


def test_training_engine_follows_the_settings(tmp_path):
    assert training_engine(Settings(state_dir=tmp_path)) == LOCAL
    on_ray = training_engine(Settings(state_dir=tmp_path, compute_engine="ray", ray_train_workers=3))
    assert on_ray == TrainingEngine("ray", 3)
    assert on_ray.tags() == {"compute_engine": "ray", "train_workers": "3"}
    assert on_ray.describe() == "ray (3 workers)" and LOCAL.describe() == "local"


def test_ray_engine_without_ray_installed_raises_compute_engine_error(parts, tmp_path, no_ray):
    settings = Settings(state_dir=tmp_path, compute_engine="ray")
    with pytest.raises(ComputeEngineError, match="install the `ray` extra"):
        fit_booster(settings, parts, FAST_PARAMS)
    assert not settings.runs_dir.exists()  # no Ray run storage was made


def test_ray_is_imported_with_uv_run_propagation_off(tmp_path, monkeypatch, no_ray):
    """Ray reads the switch at import: under `uv run` its workers otherwise restarted with uv and died."""
    monkeypatch.delenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", raising=False)
    with pytest.raises(ComputeEngineError):
        ensure_ray(Settings(state_dir=tmp_path, compute_engine="ray"))
    assert os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0"


def test_uv_run_propagation_stays_off_when_ray_was_imported_before_ensure_ray(monkeypatch):
    """A Ray imported first kept its default (on): through Ray Client the cluster then never started our server."""
    ray_constants = pytest.importorskip("ray._private.ray_constants")
    monkeypatch.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", True)
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    keep_uv_run_propagation_off()
    assert ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV is False
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "1")  # an explicit choice is left alone
    monkeypatch.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", True)
    keep_uv_run_propagation_off()
    assert ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV is True


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_ray_address_where_nothing_listens_is_refused_naming_the_setting(scheme):
    address = f"{scheme}127.0.0.1:{free_port()}"
    with pytest.raises(ComputeEngineError, match=r"cannot start or reach Ray \(.*\).*MLSTACK_RAY_ADDRESS"):
        check_reachable(address, timeout=5)
    check_reachable("auto", timeout=5)  # no host and port to check: left to Ray


class FlakyRayClient:
    """Stands in for the `ray` module: its Ray Client `init` fails as the head's proxy did, `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: object) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionAbortedError("Initialization failure from server: ZombieProcess")

    def get_runtime_context(self) -> object:
        return type("Context", (), {"gcs_address": "127.0.0.1:6379"})()


@pytest.mark.parametrize(
    ("address", "failures", "calls", "connected"),
    [
        ("ray://127.0.0.1:{port}", 2, 3, True),  # the proxy failed twice, the third attempt connected
        ("ray://127.0.0.1:{port}", 3, 3, False),  # it kept failing: the stack's error, after the last attempt
        ("127.0.0.1:{port}", 1, 1, False),  # a GCS address has no proxy: no retry
    ],
)
def test_ray_client_connection_is_retried_when_the_heads_proxy_fails(monkeypatch, address, failures, calls, connected):
    monkeypatch.setattr(compute, "RAY_CLIENT_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(compute, "check_reachable", lambda address, timeout: None)
    ray = FlakyRayClient(failures)
    settings = Settings(compute_engine="ray", ray_address=address.format(port=free_port()))
    if connected:
        compute._init_ray(ray, settings)
    else:
        with pytest.raises(ComputeEngineError, match=r"cannot start or reach Ray .*Initialization failure"):
            compute._init_ray(ray, settings)
    assert ray.calls == calls


def test_ray_engine_checks_labels_before_reaching_ray(parts, tmp_path, no_ray):
    one_class = parts.train.assign(defaulted=0)
    broken = type(parts)(one_class, parts.validation, parts.holdout, parts.calibration)
    with pytest.raises(ValueError, match="the train frame needs both classes"):
        train_booster_on_ray(Settings(state_dir=tmp_path, compute_engine="ray"), broken, FAST_PARAMS)


def test_ray_engine_refuses_more_workers_than_training_rows(parts, tmp_path, no_ray):
    tiny = type(parts)(parts.train.head(4), parts.validation, parts.holdout, parts.calibration)
    settings = Settings(state_dir=tmp_path, compute_engine="ray", ray_train_workers=5)
    with pytest.raises(ValueError, match="4 training row"):
        train_booster_on_ray(settings, tiny, FAST_PARAMS)


def test_model_frame_carries_the_encoded_matrix_and_labels(parts):
    matrix, labels = frame_arrays(model_frame(parts.validation, "validation"))
    np.testing.assert_array_equal(matrix, model_input.encode(parts.validation))
    np.testing.assert_array_equal(labels, parts.validation[model_input.LABEL].to_numpy(dtype=np.float64))
