"""Class imbalance on the time-ordered holdout: no reweighting vs `scale_pos_weight` vs `is_unbalance`.

One point-in-time training set (Feast) split by time: train < early stopping < calibration < holdout
(the validation part of `split_by_time` cut in two by time). Each variant is the same LightGBM
(the settings' hyperparameters, early-stopped on log loss), then Platt scaling fitted on the
calibration rows (`CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid")`; scikit-learn
1.9 has no `cv="prefit"`). Metrics on the holdout with `mlstack.training.evaluation`, before and
after calibration.

    uv run python -m benchmarks.imbalance --customers 100000
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
from datetime import UTC, datetime

import lightgbm
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from benchmarks.common import prepare
from mlstack.features.store import apply_features, get_store
from mlstack.training import evaluation, model_input
from mlstack.training.dataset import build_training_set, split_by_time, training_params

VARIANTS: dict[str, dict[str, object]] = {
    "none": {},
    "scale_pos_weight": {"scale_pos_weight": None},  # None: negatives / positives of the training rows
    "is_unbalance": {"is_unbalance": True},
}


def model(extra: dict[str, object], base: dict[str, object]) -> lightgbm.LGBMClassifier:
    """The settings' LightGBM as an sklearn classifier, with a variant's imbalance option."""
    return lightgbm.LGBMClassifier(n_estimators=1000, **base, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    settings = prepare(args.customers)
    store = get_store(settings)
    apply_features(store, settings.feature_repo)
    frame = build_training_set(settings, store).frame
    parts = split_by_time(frame, settings.validation_fraction, settings.holdout_fraction)
    stop_part, calibration_part = np.array_split(parts.validation, 2)  # time order kept: both halves in order
    params = training_params(settings)
    base = {
        key: value for key, value in params.lightgbm_params().items() if key not in ("metric", "num_threads", "verbose")
    }
    base.update(n_jobs=1, verbose=-1)

    def matrix(part: pd.DataFrame) -> np.ndarray:
        return model_input.encode(part)

    y_train = parts.train[model_input.LABEL].to_numpy()
    positives = int(y_train.sum())
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, revision {revision}, {args.customers:,} customers: "
        f"train {len(parts.train):,} ({positives / len(y_train):.1%} defaults), early stopping {len(stop_part):,}, "
        f"calibration {len(calibration_part):,}, holdout {len(parts.holdout):,} "
        f"({int(parts.holdout[model_input.LABEL].sum()):,} defaults)"
    )
    columns = (
        "variant",
        "stopped on",
        "calibrated",
        "ROC AUC",
        "log loss",
        "Brier",
        "ECE",
        "intercept",
        "slope",
        "rounds",
    )
    print(f"| {' | '.join(columns)} |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    # Early stopping on log loss judges a reweighted model by the probabilities the reweighting
    # distorts (it stops within a few rounds); on AUC, by ranking alone. Both are shown.
    for (name, extra), stop_metric in itertools.product(VARIANTS.items(), ("binary_logloss", "auc")):
        if extra.get("scale_pos_weight", 0) is None:
            extra = {"scale_pos_weight": (len(y_train) - positives) / positives}
        classifier = model({**extra, "metric": stop_metric}, base)
        classifier.fit(
            matrix(parts.train),
            y_train,
            eval_set=[(matrix(stop_part), stop_part[model_input.LABEL].to_numpy())],
            categorical_feature=model_input.categorical_indices(),
            callbacks=[lightgbm.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)],
        )
        calibrated = CalibratedClassifierCV(FrozenEstimator(classifier), method="sigmoid")
        calibrated.fit(matrix(calibration_part), calibration_part[model_input.LABEL].to_numpy())
        holdout = matrix(parts.holdout)
        labels = parts.holdout[model_input.LABEL].to_numpy()
        for label, probabilities in (
            ("no", classifier.predict_proba(holdout)[:, 1]),
            ("Platt", calibrated.predict_proba(holdout)[:, 1]),
        ):
            m = evaluation.evaluate_predictions(labels, probabilities, settings.decision_threshold)
            print(
                f"| {name} | {stop_metric} | {label} | {m.roc_auc:.4f} | {m.log_loss:.4f} | {m.brier:.4f} "
                f"| {m.calibration_error:.4f} | {m.calibration_intercept:+.3f} | {m.calibration_slope:.3f} "
                f"| {classifier.best_iteration_} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
