"""LightGBM on Ray: the main fit, data-parallel over Ray Train workers, returning a plain `lightgbm.Booster`.

`fit_booster` is the engine switch (`MLSTACK_COMPUTE_ENGINE`): `local` trains in this process
(`dataset.train_booster`); `ray` runs Ray Train's `LightGBMTrainer` with
`MLSTACK_RAY_TRAIN_WORKERS` workers of one CPU each. The encoded training rows become a Ray Dataset
split across the workers (LightGBM's `tree_learner=data_parallel`, `pre_partition`: each worker holds
its share of rows, histograms are summed over the network every split); the validation rows go
whole to every worker, so each computes the same validation log loss after every round and all stop
at the same best iteration. Rank 0 saves the booster (best iteration kept) to a Ray checkpoint,
read back here as a native Booster with the same feature names, categoricals and `best_iteration`
as a local one: calibration, MLflow logging, the gate, the bento and the service do not change.

Why the result differs a little from the local booster: in distributed mode LightGBM builds each
feature's histogram bins from one worker's sample of rows, not from all rows, so split thresholds
fall on slightly different values; the trees then differ, and early stopping may stop a few rounds
apart. Everything else (parameters, seed, feature sampling, the summed histograms) is the same.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm
import numpy as np
import numpy.typing as npt
import pandas as pd

from mlstack.compute import ComputeEngineError, Engine, ensure_ray
from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.training import model_input
from mlstack.training.dataset import (
    VALIDATION_NAME,
    Split,
    TrainingParams,
    fit_lightgbm,
    lightgbm_datasets,
    split_labels,
    train_booster,
)

if TYPE_CHECKING:
    import ray.data

MODEL_FILE = "booster.txt"  # the booster in the rank-0 worker's checkpoint
WORKER_CPUS = 1  # Ray resources of one training worker; LightGBM's num_threads follows it
RUN_PREFIX = "ray-train-"  # Ray Train's run storage under the settings' runs dir, removed after the fit


class DistributedTrainingError(StackError):
    """Training on Ray failed; the message carries the workers' cause. Nothing was trained or registered."""


@dataclass(frozen=True)
class TrainingEngine:
    """Where a booster was fitted: the compute engine and how many LightGBM workers took part."""

    name: Engine
    workers: int

    def tags(self) -> dict[str, str]:
        """MLflow tags of a run whose model this engine fitted."""
        return {"compute_engine": self.name, "train_workers": str(self.workers)}

    def describe(self) -> str:
        """E.g. "ray (2 workers)", "local"."""
        return f"ray ({self.workers} workers)" if self.name == "ray" else self.name


LOCAL = TrainingEngine("local", 1)


def training_engine(settings: Settings) -> TrainingEngine:
    """The engine `fit_booster` uses under these settings."""
    return TrainingEngine("ray", settings.ray_train_workers) if settings.compute_engine == "ray" else LOCAL


def fit_booster(settings: Settings, split: Split, params: TrainingParams) -> lightgbm.Booster:
    """The main fit on the configured engine: this process, or data-parallel LightGBM on Ray."""
    if settings.compute_engine == "ray":
        return train_booster_on_ray(settings, split, params)
    return train_booster(split, params)


def train_booster_on_ray(settings: Settings, split: Split, params: TrainingParams) -> lightgbm.Booster:
    """`train_booster` on Ray Train: the same booster contract, trained by `ray_train_workers` workers.

    Raises ComputeEngineError when Ray is missing or unreachable (or a local Ray has too few CPUs for
    the workers), DistributedTrainingError when the workers fail (the cause in the message); Ray's run
    storage is removed either way.
    """
    workers = settings.ray_train_workers
    train_frame = model_frame(split.train, "train")
    validation_frame = model_frame(split.validation, "validation")
    if len(train_frame) < workers:
        raise ValueError(f"{len(train_frame)} training row(s) cannot be shared by {workers} Ray workers")
    ray_in_use = ensure_ray(settings)
    if ray_in_use.started_locally and workers * WORKER_CPUS > ray_in_use.cpus:
        # A local Ray cannot grow: Ray Train would wait for the missing CPUs forever.
        raise ComputeEngineError(
            f"MLSTACK_RAY_TRAIN_WORKERS={workers} needs {workers * WORKER_CPUS} CPUs, the local Ray has "
            f"{ray_in_use.cpus:g} (MLSTACK_RAY_NUM_CPUS): lower the workers or raise the CPUs"
        )
    import ray.data
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer

    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=settings.runs_dir))  # mode 0700: private
    try:
        trainer = LightGBMTrainer(
            train_on_worker,
            train_loop_config={"params": params},
            scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": WORKER_CPUS}),
            run_config=ray.train.RunConfig(name=f"{RUN_PREFIX}{uuid.uuid4().hex[:12]}", storage_path=str(storage)),
            datasets={"train": _dataset(train_frame), VALIDATION_NAME: _dataset(validation_frame)},
            # Only the training rows are shared out: every worker scores the whole validation set.
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise DistributedTrainingError(f"LightGBM on Ray ({workers} workers) failed: {exc}") from exc
        if result.error is not None:
            raise DistributedTrainingError(f"LightGBM on Ray ({workers} workers) failed: {result.error}")
        if result.checkpoint is None:
            raise DistributedTrainingError(f"LightGBM on Ray ({workers} workers) finished without a model checkpoint")
        with result.checkpoint.as_directory() as directory:
            booster = lightgbm.Booster(model_file=str(Path(directory) / MODEL_FILE))
        booster.best_iteration = int((result.metrics or {}).get("best_iteration", booster.current_iteration()))
        return booster
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def model_frame(frame: pd.DataFrame, part: str) -> pd.DataFrame:
    """The encoded model inputs (`model_input.FEATURES`, float64) and the 0/1 label of one part, as columns."""
    encoded = pd.DataFrame(model_input.encode(frame), columns=list(model_input.FEATURES))
    encoded[model_input.LABEL] = split_labels(frame, part)
    return encoded


def _dataset(frame: pd.DataFrame) -> ray.data.Dataset:
    import ray.data

    return ray.data.from_pandas(frame)


def frame_arrays(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(model matrix in `FEATURES` order, labels) of a `model_frame`."""
    matrix = frame[list(model_input.FEATURES)].to_numpy(dtype=np.float64)
    return matrix, frame[model_input.LABEL].to_numpy(dtype=np.float64)


def train_on_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: LightGBM data-parallel on its share of rows; rank 0 checkpoints the booster."""
    import ray.train
    from ray.train.lightgbm import get_network_params

    params: TrainingParams = config["params"]
    train = ray.train.get_dataset_shard("train").materialize().to_pandas()
    validation = ray.train.get_dataset_shard(VALIDATION_NAME).materialize().to_pandas()
    train_set, validation_set = lightgbm_datasets(*frame_arrays(train), *frame_arrays(validation))
    native = {
        **params.lightgbm_params(),
        **get_network_params(),  # num_machines, machines, local_listen_port of this worker group
        "tree_learner": "data_parallel",
        "pre_partition": True,  # each worker already holds only its share of the rows
        "num_threads": WORKER_CPUS,
    }
    booster = fit_lightgbm(native, params, train_set, validation_set)
    metrics = {
        "best_iteration": booster.best_iteration,
        "validation_log_loss": float(booster.best_score[VALIDATION_NAME]["binary_logloss"]),
        "worker_rows": len(train),
    }
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)  # every worker reports once: report is a barrier
        return
    with tempfile.TemporaryDirectory(prefix="mlstack-booster-") as directory:
        booster.save_model(str(Path(directory) / MODEL_FILE))  # best iteration's trees only
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
