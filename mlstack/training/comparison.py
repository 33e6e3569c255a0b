"""Paired comparison of two models on the same holdout rows: bootstrap intervals and DeLong's AUC test.

Both models score the same rows, so their errors are correlated: comparing two separate intervals
would be far too conservative. Everything here is paired, row by row. Pure numpy; no model, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from mlstack.training.evaluation import PROBABILITY_CLIP

# Bootstrap draws are generated this many row indices at a time (bounded memory on large holdouts).
BOOTSTRAP_CHUNK_INDICES = 2_000_000


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval: lower <= estimate <= upper (usually)."""

    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class AucDifference:
    """DeLong's test of two correlated ROC AUCs on the same rows (`delong_test`); difference = first - second."""

    first: float
    second: float
    difference: Interval  # normal-approximation interval from DeLong's variance
    standard_error: float
    p_value: float  # two-sided, for "no difference"


@dataclass(frozen=True)
class Comparison:
    """Challenger minus champion on the same rows: negative log loss / Brier, positive AUC favour the challenger."""

    rows: int  # rows both models scored with a finite prediction
    defaults: int  # of which defaulted
    confidence: float
    log_loss: Interval  # paired bootstrap (percentile interval)
    brier: Interval  # paired bootstrap, the same resamples
    roc_auc: Interval  # DeLong
    roc_auc_p_value: float


def row_log_loss(labels: npt.NDArray[np.float64], probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row's log loss, shape (rows,) (predictions clipped as in `evaluation`)."""
    p = np.clip(probabilities, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return np.asarray(-(labels * np.log(p) + (1 - labels) * np.log1p(-p)), dtype=np.float64)


def row_brier(labels: npt.NDArray[np.float64], probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row's squared error, shape (rows,)."""
    return np.asarray((probabilities - labels) ** 2, dtype=np.float64)


def paired_bootstrap(differences: npt.NDArray[np.float64], rounds: int, seed: int, confidence: float) -> list[Interval]:
    """Percentile intervals for the means of per-row differences, one per row of ``differences`` (measures x rows).

    Every measure is resampled with the same row indices in each round, so the intervals describe
    one resampling of the holdout. Seeded: the same inputs, rounds and seed give the same intervals.
    """
    differences = np.atleast_2d(np.asarray(differences, dtype=np.float64))
    measures, rows = differences.shape
    if rows == 0:
        raise ValueError("the bootstrap needs at least one row")
    if rounds < 1:
        raise ValueError(f"bootstrap rounds must be >= 1, got {rounds}")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    means = np.empty((measures, rounds))
    per_chunk = max(1, BOOTSTRAP_CHUNK_INDICES // rows)
    for start in range(0, rounds, per_chunk):
        stop = min(rounds, start + per_chunk)
        index = rng.integers(0, rows, size=(stop - start, rows))
        for measure in range(measures):
            means[measure, start:stop] = differences[measure][index].mean(axis=1)
    tail = (1 - confidence) / 2
    lower, upper = np.quantile(means, [tail, 1 - tail], axis=1)
    observed = differences.mean(axis=1)
    return [Interval(float(observed[i]), float(lower[i]), float(upper[i])) for i in range(measures)]


def midranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks with ties given their average rank, shape (len(values),)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return np.asarray((last - (counts - 1) / 2)[inverse], dtype=np.float64)  # mean of first and last rank


def delong_covariance(
    labels: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """ROC AUCs of each row of ``scores`` (models x rows) and DeLong's covariance matrix of them (models x models).

    The fast algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21(11)): the structural
    components of DeLong, DeLong & Clarke-Pearson (1988) from midranks, O(rows log rows) per model
    instead of comparing every default with every non-default.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(labels) == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least two defaults and two non-defaults, got {m} and {n}")
    k = scores.shape[0]
    v10 = np.empty((k, m))  # per default: share of non-defaults it outranks (ties count half)
    v01 = np.empty((k, n))  # per non-default: share of defaults that outrank it
    aucs = np.empty(k)
    for model in range(k):
        x, y = scores[model, positive], scores[model, ~positive]
        tx, ty, tz = midranks(x), midranks(y), midranks(np.concatenate([x, y]))
        aucs[model] = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[model] = (tz[:m] - tx) / n
        v01[model] = 1.0 - (tz[m:] - ty) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(
    labels: npt.NDArray[np.float64],
    first: npt.NDArray[np.float64],
    second: npt.NDArray[np.float64],
    confidence: float,
) -> AucDifference:
    """DeLong's paired test of AUC(first) - AUC(second) on the same rows, with a two-sided interval."""
    _check_confidence(confidence)
    aucs, covariance = delong_covariance(labels, np.vstack([first, second]))
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    se = math.sqrt(max(variance, 0.0))
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    # With se == 0 (identical rankings) the difference has no sampling variation at all.
    p_value = 2 * (1 - NormalDist().cdf(abs(difference) / se)) if se > 0 else float(difference == 0)
    interval = Interval(difference, difference - z * se, difference + z * se)
    return AucDifference(float(aucs[0]), float(aucs[1]), interval, se, p_value)


def compare(
    labels: npt.NDArray[np.float64],
    challenger: npt.NDArray[np.float64],
    champion: npt.NDArray[np.float64],
    *,
    confidence: float,
    rounds: int,
    seed: int,
) -> Comparison:
    """Challenger minus champion on the rows both scored: log loss and Brier (paired bootstrap), ROC AUC (DeLong)."""
    labels = np.asarray(labels, dtype=np.float64)
    challenger = np.asarray(challenger, dtype=np.float64)
    champion = np.asarray(champion, dtype=np.float64)
    if not labels.shape == challenger.shape == champion.shape:
        raise ValueError(
            f"labels and both models' predictions must cover the same rows: {labels.shape}, "
            f"{challenger.shape}, {champion.shape}"
        )
    both = np.isfinite(challenger) & np.isfinite(champion)
    y, a, b = labels[both], challenger[both], champion[both]
    differences = np.vstack([row_log_loss(y, a) - row_log_loss(y, b), row_brier(y, a) - row_brier(y, b)])
    log_loss, brier = paired_bootstrap(differences, rounds, seed, confidence)
    auc = delong_test(y, a, b, confidence)
    return Comparison(
        rows=len(y),
        defaults=int(y.sum()),
        confidence=confidence,
        log_loss=log_loss,
        brier=brier,
        roc_auc=auc.difference,
        roc_auc_p_value=auc.p_value,
    )


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
