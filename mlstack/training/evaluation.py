"""Model evaluation on a holdout: discrimination, calibration, decision-threshold metrics, plots."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from mlstack.training import model_input
from mlstack.training.calibration import IDENTITY, Calibrator, default_probabilities


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of 0/1 outcomes on logit(p) (`calibration_fit`)."""

    intercept: float  # a in logit P(default) = a + logit(p): > 0 the model predicts too few defaults, < 0 too many
    slope: float  # b in logit P(default) = c + b * logit(p): < 1 over-confident (too spread), > 1 under-confident


@dataclass(frozen=True)
class Metrics:
    """Holdout metrics of one model on one frame; `as_dict()` gives flat floats for MLflow."""

    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    calibration_error: float  # expected calibration error over 10 equal-width probability bins
    threshold: float  # the decision threshold the service uses
    precision_at_threshold: float
    recall_at_threshold: float
    decline_rate_at_threshold: float
    rows: int
    positives: int
    nan_predictions: int
    # The 95th percentile of the same ECE for a perfectly calibrated model with these predictions on a
    # holdout of this size (labels drawn from the predictions themselves): what sampling noise alone gives.
    calibration_error_noise: float = 0.0
    # Logistic recalibration of the outcome on logit(p) (`calibration_fit`): 0 and 1 for a calibrated
    # model. NaN: not measured (one class only, constant predictions, or recorded by an older version).
    calibration_intercept: float = math.nan
    calibration_slope: float = math.nan

    def as_dict(self) -> dict[str, float]:
        """Flat name -> float mapping (for MLflow metrics and tags)."""
        return {key: float(value) for key, value in asdict(self).items()}


CALIBRATION_BINS = 10
PROBABILITY_CLIP = 1e-15  # log loss and logit(p) of a prediction of exactly 0 or 1 stay finite
# A single feature that ranks defaults better than this on its own (AUC on the training part) is
# flagged as probable leakage. Measured on the default data (docs/training.md): the best honest feature
# (bureau_score) reaches 0.73-0.75, the same feature read from a future snapshot 0.84-0.86.
UNIVARIATE_AUC_CEILING = 0.78


@dataclass(frozen=True, eq=False)  # arrays: compare the fields, not the objects
class HoldoutScore:
    """One model on one holdout: 0/1 labels and predicted default probabilities, shape (rows,) each, and their metrics.

    The per-row values are what the gate compares (paired, row by row); two scores of the same
    holdout have the same labels in the same order.
    """

    labels: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    metrics: Metrics


def predict(
    booster: lightgbm.Booster, frame: pd.DataFrame, calibrator: Calibrator = IDENTITY
) -> npt.NDArray[np.float64]:
    """Default probabilities of "booster + calibrator" for each row of ``frame``, shape (rows,).

    The batch path: ``model_input.encode`` then ``calibration.default_probabilities``, the function
    the service applies too.
    """
    expected = list(model_input.FEATURES)
    if booster.feature_name() != expected:
        raise ValueError(
            f"the booster was trained on features {booster.feature_name()}, but the model input is {expected}"
        )
    return default_probabilities(booster, calibrator, model_input.encode(frame))


def evaluate(
    booster: lightgbm.Booster, frame: pd.DataFrame, threshold: float, calibrator: Calibrator = IDENTITY
) -> Metrics:
    """Metrics of ``booster`` (+ ``calibrator``) on ``frame`` (which carries the ``defaulted`` label) at a threshold."""
    return score_holdout(booster, frame, threshold, calibrator).metrics


def score_holdout(
    booster: lightgbm.Booster, frame: pd.DataFrame, threshold: float, calibrator: Calibrator = IDENTITY
) -> HoldoutScore:
    """``booster`` + ``calibrator``'s predictions on ``frame`` (which carries the ``defaulted`` label), with metrics."""
    if model_input.LABEL not in frame.columns:
        raise ValueError(f"the evaluation frame has no {model_input.LABEL!r} label column")
    return score_predictions(frame[model_input.LABEL].to_numpy(), predict(booster, frame, calibrator), threshold)


def score_predictions(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float) -> HoldoutScore:
    """Labels and predictions as arrays, with `evaluate_predictions` of them."""
    labels, probs = _checked(y_true, y_prob)
    return HoldoutScore(labels, probs, evaluate_predictions(labels, probs, threshold))


def evaluate_predictions(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float) -> Metrics:
    """Metrics of predicted default probabilities against 0/1 labels; "decline" means ``prob >= threshold``.

    Non-finite predictions are counted in ``nan_predictions`` and left out of every other metric;
    ``rows`` and ``positives`` count all rows. A metric undefined on the data (one class only) is NaN.
    """
    labels, probs = _checked(y_true, y_prob)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    finite = np.isfinite(probs)
    y, p = labels[finite], probs[finite]
    both_classes = len(np.unique(y)) == 2
    declined = p >= threshold
    true_declines = int((declined & (y == 1)).sum())
    fit = calibration_fit(y, p)
    return Metrics(
        roc_auc=float(roc_auc_score(y, p)) if both_classes else math.nan,
        pr_auc=float(average_precision_score(y, p)) if both_classes else math.nan,
        log_loss=float(log_loss(y, np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP), labels=[0, 1]))
        if len(y)
        else math.nan,
        brier=float(brier_score_loss(y, p, pos_label=1)) if len(y) else math.nan,
        calibration_error=_expected_calibration_error(y, p),
        calibration_error_noise=calibration_error_noise(p),
        threshold=float(threshold),
        precision_at_threshold=true_declines / int(declined.sum()) if declined.any() else math.nan,
        recall_at_threshold=true_declines / int(y.sum()) if y.any() else math.nan,
        decline_rate_at_threshold=float(declined.mean()) if len(y) else math.nan,
        rows=len(labels),
        positives=int(labels.sum()),
        nan_predictions=int((~finite).sum()),
        calibration_intercept=fit.intercept,
        calibration_slope=fit.slope,
    )


def calibration_fit(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> CalibrationFit:
    """Calibration intercept and slope: logistic regressions of the outcome on logit(p), fitted by Newton's method.

    The slope is b of ``logit P(y=1) = c + b * logit(p)``; the intercept is a of
    ``logit P(y=1) = a + logit(p)`` (slope held at 1: "calibration in the large", Van Calster et al.
    2019), so it reads as the log-odds shift the predictions need on average whatever the slope.
    A calibrated model has intercept 0 and slope 1. Non-finite predictions are left out; NaN when
    the data cannot define a value (one class only; for the slope, constant predictions).
    """
    labels, probs = _checked(y_true, y_prob)
    finite = np.isfinite(probs)
    y, p = labels[finite], np.clip(probs[finite], PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    if len(np.unique(y)) < 2:
        return CalibrationFit(math.nan, math.nan)
    z = np.log(p) - np.log1p(-p)
    intercept = _logistic_fit(np.ones((len(y), 1)), y, offset=z)
    slope = _logistic_fit(np.column_stack([np.ones(len(y)), z]), y) if np.ptp(z) > 0 else None
    return CalibrationFit(
        intercept=math.nan if intercept is None else float(intercept[0]),
        slope=math.nan if slope is None else float(slope[1]),
    )


def _logistic_fit(
    design: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64] | None = None,
    iterations: int = 50,
) -> npt.NDArray[np.float64] | None:
    """Maximum-likelihood coefficients of ``logit P(y=1) = offset + design @ beta`` (None: no finite optimum).

    Newton-Raphson with step halving: the log-likelihood is concave, so each accepted step improves it.
    """
    base = np.zeros(len(y)) if offset is None else offset

    def log_likelihood(beta: npt.NDArray[np.float64]) -> float:
        eta = base + design @ beta
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    beta = np.zeros(design.shape[1])
    current = log_likelihood(beta)
    for _ in range(iterations):
        mu = 0.5 * (1.0 + np.tanh((base + design @ beta) / 2))  # the logistic function, without overflow
        gradient = design.T @ (y - mu)
        hessian = design.T @ (design * (mu * (1.0 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):  # halve the step until the likelihood does not fall
            candidate = beta + step
            value = log_likelihood(candidate)
            if value >= current - 1e-12:
                break
            step = step / 2
        beta, current = candidate, value
        if np.max(np.abs(step)) < 1e-10:
            return beta if np.all(np.isfinite(beta)) else None
    return beta if np.all(np.isfinite(beta)) and np.max(np.abs(step)) < 1e-6 else None


def reliability_curve(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """One row per equal-width probability bin on [0, 1]; non-finite predictions are left out.

    Columns: bin_lower, bin_upper, count, mean_predicted, observed_rate (NaN means for empty bins).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    labels, probs = _checked(y_true, y_prob)
    finite = np.isfinite(probs)
    y, p = labels[finite], probs[finite]
    index = np.minimum((p * bins).astype(np.int64), bins - 1)  # p == 1.0 belongs to the last bin
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, sum_p / count, np.nan)
        observed_rate = np.where(count > 0, sum_y / count, np.nan)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count.astype(np.int64),
            "mean_predicted": mean_predicted,
            "observed_rate": observed_rate,
        }
    )


def univariate_auc(frame: pd.DataFrame) -> dict[str, float]:
    """ROC AUC of each numeric model feature alone, oriented as max(auc, 1 - auc), in FEATURES order.

    Rows where the feature is missing are left out; a feature that is constant or leaves one class is skipped.
    """
    if model_input.LABEL not in frame.columns:
        raise ValueError(f"univariate_auc needs the {model_input.LABEL!r} label column")
    labels = frame[model_input.LABEL].to_numpy(dtype=np.float64, na_value=np.nan)
    matrix = model_input.encode(frame)
    result = {}
    for i, name in enumerate(model_input.FEATURES):
        if name in model_input.CATEGORICAL:
            continue
        present = np.isfinite(matrix[:, i]) & np.isfinite(labels)
        y, x = labels[present], matrix[present, i]
        if len(np.unique(y)) < 2 or len(np.unique(x)) < 2:
            continue
        auc = float(roc_auc_score(y, x))
        result[name] = max(auc, 1.0 - auc)
    return result


def leakage_warnings(
    metrics: Metrics,
    ceiling: float,
    univariate: dict[str, float] | None = None,
    *,
    univariate_ceiling: float = UNIVARIATE_AUC_CEILING,
) -> list[str]:
    """Human-readable reasons to suspect label leakage (empty when none): model AUC or one feature too good."""
    warnings = []
    if math.isfinite(metrics.roc_auc) and metrics.roc_auc > ceiling:
        warnings.append(
            f"holdout ROC AUC {metrics.roc_auc:.3f} exceeds the leakage ceiling {ceiling:.3f}: probable label "
            "leakage (check that features are joined point-in-time)"
        )
    for name, auc in sorted((univariate or {}).items(), key=lambda item: -item[1]):
        if auc > univariate_ceiling:
            warnings.append(
                f"feature {name!r} alone has ROC AUC {auc:.3f} > {univariate_ceiling:.3f}: probable label leakage "
                "(does it read values recorded after the application?)"
            )
    return warnings


def write_plots(
    booster: lightgbm.Booster,
    frame: pd.DataFrame,
    out_dir: Path,
    *,
    champion: HoldoutScore | None = None,
    champion_label: str = "champion",
    calibrator: Calibrator = IDENTITY,
) -> list[Path]:
    """Write roc.png, pr.png, calibration.png and feature_importance.png of ``booster`` on ``frame``; returns paths.

    With ``champion`` (its score on the same rows), calibration.png shows both models' reliability
    curves, each with its ECE, calibration intercept and slope.
    """
    if model_input.LABEL not in frame.columns:
        raise ValueError(f"write_plots needs the {model_input.LABEL!r} label column")
    labels, probs = _checked(frame[model_input.LABEL].to_numpy(), predict(booster, frame, calibrator))
    if champion is not None and not np.array_equal(champion.labels, labels):
        raise ValueError("the champion's score must be of the same holdout rows as the frame")
    finite = np.isfinite(probs)
    y, p = labels[finite], probs[finite]
    if len(np.unique(y)) < 2:
        raise ValueError("write_plots needs both classes of 'defaulted' among rows with finite predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    subtitle = f"{len(y):,} rows, {int(y.sum()):,} defaults"
    curves = [("model" if champion is None else "challenger", labels, probs)]
    if champion is not None:
        curves.append((champion_label, champion.labels, champion.probabilities))
    figures = {
        "roc.png": _roc_figure(y, p, subtitle),
        "pr.png": _pr_figure(y, p, subtitle),
        "calibration.png": _calibration_figure(curves, subtitle),
        "feature_importance.png": _importance_figure(booster),
    }
    return [_save(figure, out_dir / name) for name, figure in figures.items()]


# --------------------------------------------------------------------------- internals


def _checked(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    labels = np.asarray(y_true, dtype=np.float64).ravel()
    probs = np.asarray(y_prob, dtype=np.float64).ravel()
    if labels.shape != probs.shape:
        raise ValueError(f"y_true and y_prob differ in length: {labels.size} vs {probs.size}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0/1 labels (no missing values)")
    finite = probs[np.isfinite(probs)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"y_prob must be probabilities in [0, 1], got range [{finite.min()}, {finite.max()}]")
    return labels, probs


NOISE_DRAWS = 400
NOISE_QUANTILE = 0.95


def calibration_error_noise(y_prob: npt.ArrayLike, draws: int = NOISE_DRAWS, seed: int = 0) -> float:
    """The 95th percentile of the 10-bin ECE of a perfectly calibrated model with these predictions.

    Labels are drawn as Bernoulli(p) for each prediction ``draws`` times (seeded: reproducible), so
    the answer is how large the ECE of a model with no calibration error at all gets on a holdout of
    this size and shape by chance. On a few hundred rows it is 0.05-0.09 (docs/training.md).
    """
    p = np.asarray(y_prob, dtype=np.float64)
    p = p[np.isfinite(p)]
    if not len(p):
        return math.nan
    rng = np.random.default_rng(seed)
    index = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    sum_p = np.bincount(index, weights=p, minlength=CALIBRATION_BINS)
    # One draw at a time: memory stays O(rows) (a (draws, rows) matrix is 640 MB for a 200k-row holdout);
    # the generator's stream, and so the answer, is the same as drawing the matrix at once.
    errors = np.empty(draws)
    for draw in range(draws):
        sum_y = np.bincount(index, weights=rng.random(len(p)) < p, minlength=CALIBRATION_BINS)
        errors[draw] = np.abs(sum_y - sum_p).sum() / len(p)  # sum over bins of count * |rate - mean|, over rows
    return float(np.quantile(errors, NOISE_QUANTILE))


def _expected_calibration_error(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64]) -> float:
    """Sum over equal-width bins of (bin share of rows) * |observed rate - mean prediction|."""
    if not len(y):
        return math.nan
    curve = reliability_curve(y, p, CALIBRATION_BINS)
    filled = curve[curve["count"] > 0]
    gaps = (filled["observed_rate"] - filled["mean_predicted"]).abs()
    return float((filled["count"] * gaps).sum() / len(y))


def _new_figure(width: float = 6.0, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # Agg without pyplot: no global backend switch, safe in threads
    return figure


def _roc_figure(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], subtitle: str) -> Figure:
    figure = _new_figure()
    axes = figure.add_subplot()
    fpr, tpr, _ = roc_curve(y, p)
    axes.plot(fpr, tpr, color="tab:blue", lw=2, label=f"model (ROC AUC = {roc_auc_score(y, p):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance (AUC = 0.500)")
    axes.set(
        title=f"ROC curve\n{subtitle}",
        xlabel="False positive rate (good loans declined)",
        ylabel="True positive rate (defaults caught)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return figure


def _pr_figure(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], subtitle: str) -> Figure:
    figure = _new_figure()
    axes = figure.add_subplot()
    precision, recall, _ = precision_recall_curve(y, p)
    prevalence = float(y.mean())
    axes.plot(
        recall,
        precision,
        color="tab:blue",
        lw=2,
        label=f"model (PR AUC = average precision = {average_precision_score(y, p):.3f})",
    )
    axes.axhline(prevalence, color="grey", ls="--", lw=1, label=f"default rate ({prevalence:.3f})")
    axes.set(
        title=f"Precision-recall curve\n{subtitle}",
        xlabel="Recall (share of defaults declined)",
        ylabel="Precision (share of declines that default)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="upper right")
    axes.grid(alpha=0.3)
    return figure


def _calibration_figure(
    curves: list[tuple[str, npt.NDArray[np.float64], npt.NDArray[np.float64]]], subtitle: str
) -> Figure:
    """Reliability curves of one or more models on the same rows: (label, labels, predictions) each."""
    figure = _new_figure(6.0, 6.5)
    curve_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    curve_axes.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    for (label, labels, probs), colour in zip(curves, ("tab:blue", "tab:orange"), strict=False):
        finite = np.isfinite(probs)
        y, p = labels[finite], probs[finite]
        curve = reliability_curve(y, p, CALIBRATION_BINS)
        filled = curve[curve["count"] > 0]
        fit = calibration_fit(y, p)
        curve_axes.plot(
            filled["mean_predicted"],
            filled["observed_rate"],
            "o-",
            color=colour,
            label=f"{label} (ECE {_expected_calibration_error(y, p):.3f}, "
            f"intercept {fit.intercept:+.2f}, slope {fit.slope:.2f})",
        )
        count_axes.stairs(curve["count"], np.linspace(0, 1, CALIBRATION_BINS + 1), color=colour, lw=1.5, label=label)
    curve_axes.set(
        title=f"Calibration ({CALIBRATION_BINS} equal-width bins)\n{subtitle}",
        ylabel="Observed default rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    curve_axes.legend(loc="upper left", fontsize="small")
    curve_axes.grid(alpha=0.3)
    count_axes.set(xlabel="Predicted default probability", ylabel="Rows (log scale)", yscale="log")
    count_axes.grid(alpha=0.3)
    return figure


def _importance_figure(booster: lightgbm.Booster) -> Figure:
    gains = pd.Series(booster.feature_importance(importance_type="gain"), index=booster.feature_name())
    gains = gains.sort_values()
    figure = _new_figure(7.0, 0.32 * len(gains) + 1.5)
    axes = figure.add_subplot()
    axes.barh(gains.index, gains.to_numpy(), color="tab:blue")
    axes.set(
        title=f"Feature importance (total gain, {booster.current_iteration()} trees)",
        xlabel="Total split gain",
        ylabel="Feature",
    )
    axes.grid(axis="x", alpha=0.3)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Write the PNG under a temporary name, then move it into place: never a half-written file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
