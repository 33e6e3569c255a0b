"""Time-aware hyperparameter search: an Optuna study over `lightgbm.cv` on time-ordered, purged folds.

Folds (`time_folds`): sklearn's `TimeSeriesSplit` over the rows in time order gives expanding
train blocks and later validation blocks; each fold's train block then loses every row applied for
less than the label-maturity horizon (`MLSTACK_LABEL_MATURITY_DAYS`) before its validation block
starts. A loan's outcome is known at most that long after the application, so no fold trains on an
outcome observed after its validation period starts. Folds left with too few rows are dropped; none
left raises `InsufficientHistoryError` (the history is shorter than the horizon allows).

Which parameters a run trains with (`choose_params`): `tune=True` runs the study (the weekly
training); otherwise the champion's recorded parameters are reused (a drift retrain stays fast),
else the settings'. `record_params` writes the choice to the model version and its run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, cast

import lightgbm
import mlflow
import numpy as np
import numpy.typing as npt
import optuna
import pandas as pd
from sklearn.model_selection import TimeSeriesSplit

from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.training import model_input, registry
from mlstack.training.dataset import Split, TrainingParams, training_params

ParamsSource = Literal["tuned", "champion", "settings"]
PARAMS_TAG = "training_params"  # model-version tag: the TrainingParams a version was trained with (JSON)
PARAMS_SOURCE_TAG = "training_params_source"
TRIALS_ARTIFACT = "tuning/trials.json"
MIN_FOLD_ROWS = 200  # fewer training rows in a fold say nothing about a hyperparameter


class InsufficientHistoryError(StackError):
    """The tuning rows span too little time for one fold with the label-maturity gap."""


@dataclass(frozen=True)
class Fold:
    """Row positions of one fold, and the time bounds that show its gap."""

    train: npt.NDArray[np.intp]
    validation: npt.NDArray[np.intp]
    last_train_time: pd.Timestamp
    validation_start: pd.Timestamp


@dataclass(frozen=True)
class Trial:
    """One trial of the study: its parameters, mean cross-validated log loss and best round count."""

    number: int
    params: dict[str, float | int]
    cv_log_loss: float
    rounds: int


@dataclass(frozen=True)
class TuningResult:
    """The study: every finished trial, the best one, the folds' time bounds and the wall time."""

    trials: list[Trial]
    best: Trial
    folds: list[tuple[str, str]]  # (last train time, validation start) per fold, ISO
    seconds: float


@dataclass(frozen=True)
class ParamsChoice:
    """The parameters a run trains with, where they came from, and the study when one ran."""

    params: TrainingParams
    source: ParamsSource
    detail: str
    study: TuningResult | None = None


def time_folds(times: pd.Series, n_folds: int, gap: timedelta, min_rows: int = MIN_FOLD_ROWS) -> list[Fold]:
    """Expanding-window folds over rows sorted by `times`, each train block purged of the `gap` before validation."""
    values = pd.to_datetime(times, utc=True)
    if not values.is_monotonic_increasing:
        raise ValueError("time_folds needs rows in time order (sort by event_timestamp first)")
    folds = []
    for train, validation in TimeSeriesSplit(n_splits=n_folds).split(np.zeros(len(values))):
        validation_start = values.iloc[validation[0]]
        kept = train[(values.iloc[train] <= validation_start - gap).to_numpy()]
        if len(kept) >= min_rows:
            folds.append(Fold(kept, validation, values.iloc[kept[-1]], validation_start))
    if not folds:
        span = (values.iloc[-1] - values.iloc[0]) if len(values) else timedelta(0)
        raise InsufficientHistoryError(
            f"no tuning fold has {min_rows} training rows {gap.days} days (MLSTACK_LABEL_MATURITY_DAYS) before its "
            f"validation block: the {len(values):,} rows span {span.days} days. Lower MLSTACK_TUNING_FOLDS or "
            "train on a longer history"
        )
    return folds


def tune(settings: Settings, parts: Split) -> TuningResult:
    """An Optuna study (TPE, seeded) over lightgbm.cv on the train+validation rows; holdout untouched."""
    started = time.perf_counter()
    rows = pd.concat([parts.train, parts.validation], ignore_index=True)
    folds = time_folds(rows["event_timestamp"], settings.tuning_folds, timedelta(days=settings.label_maturity_days))
    dataset = lightgbm.Dataset(
        model_input.encode(rows),
        label=rows[model_input.LABEL].to_numpy(dtype=np.float64),
        feature_name=list(model_input.FEATURES),
        categorical_feature=model_input.categorical_indices(),
        free_raw_data=False,
    )
    # One thread per cv run: fold models are small, and on a busy 2-core machine two threads were 15x
    # slower than one (23 s vs 1.6 s for one lightgbm.cv of 3 folds on 2,500 rows, load average 13).
    base = dataclasses.replace(training_params(settings), num_threads=1)
    trials: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        params = dataclasses.replace(
            base,
            learning_rate=trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            num_leaves=trial.suggest_int("num_leaves", 7, 127, log=True),
            min_data_in_leaf=trial.suggest_int("min_data_in_leaf", 20, 400, log=True),
            feature_fraction=trial.suggest_float("feature_fraction", 0.5, 1.0),
        )
        history = lightgbm.cv(
            params.lightgbm_params(),
            dataset,
            num_boost_round=params.num_boost_round,
            folds=[(fold.train, fold.validation) for fold in folds],
            callbacks=[lightgbm.early_stopping(params.early_stopping_rounds, verbose=False)],
        )
        losses = cast("list[float]", history["valid binary_logloss-mean"])
        trials.append(Trial(trial.number, dict(trial.params), float(losses[-1]), len(losses)))
        return float(losses[-1])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    study.optimize(objective, n_trials=settings.tuning_trials, timeout=settings.tuning_timeout_seconds)
    best = next(trial for trial in trials if trial.number == study.best_trial.number)
    return TuningResult(
        trials=trials,
        best=best,
        folds=[(fold.last_train_time.isoformat(), fold.validation_start.isoformat()) for fold in folds],
        seconds=time.perf_counter() - started,
    )


def choose_params(settings: Settings, parts: Split, tune_now: bool) -> ParamsChoice:
    """Tune when asked; else reuse the champion's recorded parameters; else the settings'.

    A history too short for one fold with the label-maturity gap does not fail the run: it trains
    with what it would have reused, and the choice's detail says why tuning was skipped.
    """
    base = training_params(settings)
    if tune_now:
        try:
            study = tune(settings, parts)
        except InsufficientHistoryError as exc:
            fallback = choose_params(settings, parts, tune_now=False)
            return dataclasses.replace(fallback, detail=f"{fallback.detail}; tuning skipped: {exc}")
        tuned = dataclasses.replace(base, **study.best.params)  # type: ignore[arg-type]
        return ParamsChoice(
            tuned,
            "tuned",
            f"best of {len(study.trials)} trials on {len(study.folds)} folds, "
            f"cv log loss {study.best.cv_log_loss:.5f} ({study.seconds:.0f}s)",
            study,
        )
    champion = registry.champion_version(settings)
    recorded = None if champion is None else champion.tags.get(PARAMS_TAG)
    if champion is not None and recorded:
        reused = {key: value for key, value in json.loads(recorded).items() if key in _TUNABLE}
        return ParamsChoice(dataclasses.replace(base, **reused), "champion", f"champion v{champion.version}'s")
    return ParamsChoice(base, "settings", "from settings (no champion with recorded parameters)")


_TUNABLE = ("learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction")


def record_params(settings: Settings, version: str, run_id: str, choice: ParamsChoice) -> None:
    """Tag the version with its parameters and their source; log the study (every trial) to its run."""
    client = registry.tracking(settings)
    name = settings.model_name
    client.set_model_version_tag(name, version, PARAMS_TAG, json.dumps(choice.params.as_dict(), sort_keys=True))
    client.set_model_version_tag(name, version, PARAMS_SOURCE_TAG, f"{choice.source}: {choice.detail}")
    if choice.study is None:
        return
    study = choice.study
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric("tuning_trial_cv_log_loss", trial.cv_log_loss, stamp, trial.number)
            for trial in study.trials
        ]
        + [
            mlflow.entities.Metric("tuning_best_cv_log_loss", study.best.cv_log_loss, stamp, 0),
            mlflow.entities.Metric("tuning_seconds", study.seconds, stamp, 0),
        ],
    )
    client.log_dict(
        run_id,
        {
            "best": dataclasses.asdict(study.best),
            "folds": study.folds,
            "trials": [dataclasses.asdict(trial) for trial in study.trials],
        },
        TRIALS_ARTIFACT,
    )
