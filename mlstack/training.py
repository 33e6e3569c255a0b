"""Training: point-in-time training sets from Feast, time-based splits, LightGBM with early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd


@dataclass(frozen=True)
class TrainingSet:
    """Labelled applications joined point-in-time with the feature service's features.

    `frame`: one row per loan application: application_id, customer_id, zipcode, event_timestamp,
    the request fields, every feature of the service, and the `defaulted` label.
    """

    frame: pd.DataFrame
    feature_service: str
    feature_refs: list[str]  # "view:feature" of every feature in the service
    window_start: datetime
    window_end: datetime
    fingerprint: str  # "<rows>:<sha256 of the frame, first 16 hex>"


@dataclass(frozen=True)
class Split:
    """Train / validation / holdout frames, in time order with no overlap."""

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
