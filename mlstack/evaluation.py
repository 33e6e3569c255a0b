"""Model evaluation on a holdout: discrimination, calibration, decision-threshold metrics, plots."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def as_dict(self) -> dict[str, float]:
        """Flat name -> float mapping (for MLflow metrics and tags)."""
        return {key: float(value) for key, value in asdict(self).items()}
