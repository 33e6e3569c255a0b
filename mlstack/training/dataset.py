"""Training: point-in-time training sets from Feast, time-based splits, LightGBM with early stopping."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import lightgbm
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow.parquet as pq

from mlstack.data.schema import LOAN_APPLICATIONS_FILE, REQUEST_FIELDS
from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.training import model_input
from mlstack.training.model_input import LABEL

if TYPE_CHECKING:
    from feast import FeatureStore


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
    """Train / validation / calibration / holdout frames, in time order with no overlap.

    `calibration` (the slice a calibrator is fitted on) is empty when the run does not calibrate.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)

    def rows(self) -> dict[str, int]:
        """Rows per part, in time order."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "calibration": len(self.calibration),
            "holdout": len(self.holdout),
        }


class TrainingDataError(StackError):
    """The labelled data or the joined training set is not usable; the message says what is wrong."""


ENTITY_COLUMNS = ("application_id", "customer_id", "zipcode", "event_timestamp")
VALIDATION_NAME = "validation"  # the early-stopping set's name in LightGBM's evaluation results


def training_window(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> tuple[datetime | None, datetime]:
    """The ``[start, end)`` of training applications: given bounds, else the last ``train_window_days`` (or all)."""
    for name, moment in (("start", start), ("end", end)):
        if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
            raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got {moment!r}")
    end = end or settings.data_end_datetime()
    if start is None and settings.train_window_days is not None:
        start = end - timedelta(days=settings.train_window_days)
    if start is not None and start >= end:
        raise ValueError(f"training window start {start.isoformat()} must be before end {end.isoformat()}")
    return start, end


def requested_window(
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    window_days: int | None = None,
    recent: bool = False,
    now: datetime | None = None,
) -> tuple[datetime | None, datetime | None]:
    """The (start, end) a training run asks for; None leaves a bound to ``training_window``'s defaults.

    ``window_days`` means the last N days up to ``end`` (now if not given); ``recent`` means the last
    ``retrain_window_days`` up to now, new labels included (the retraining deployment's setting).
    """
    if recent and window_days is None:
        window_days = settings.retrain_window_days
    if window_days is None:
        return start, end
    end = end or now or datetime.now(UTC)
    return start or end - timedelta(days=window_days), end


def labelled_applications(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """Entity dataframe of the labelled applications in the window, oldest first.

    Columns: application_id, customer_id, zipcode, event_timestamp, loan_amount, loan_term_months,
    loan_purpose, defaulted (``default_timestamp`` is dropped: it is known only after the fact).
    """
    start, end = training_window(settings, start, end)
    path = settings.data_dir / LOAN_APPLICATIONS_FILE
    if not path.is_file():
        raise TrainingDataError(f"labelled applications not found at {path}. Run `mlstack data generate` first.")
    columns = [*ENTITY_COLUMNS, *REQUEST_FIELDS, LABEL]
    absent = [name for name in columns if name not in pq.read_schema(path).names]
    if absent:
        raise TrainingDataError(f"labelled applications in {path} lack column(s) {absent}")
    frame = pd.read_parquet(path, columns=columns)
    in_window = frame["event_timestamp"] < end
    if start is not None:
        in_window &= frame["event_timestamp"] >= start
    frame = frame[in_window]
    if frame.empty:
        shown = f"[{start.isoformat() if start else 'beginning'}, {end.isoformat()})"
        raise TrainingDataError(f"no labelled applications in the training window {shown} of {path}")
    labels = set(frame[LABEL].unique().tolist())
    if not labels <= {0, 1}:
        raise TrainingDataError(f"column {LABEL!r} must hold 0/1 labels, found {sorted(labels, key=str)[:10]}")
    if frame["application_id"].duplicated().any():
        dupes = frame.loc[frame["application_id"].duplicated(), "application_id"].head(5).tolist()
        raise TrainingDataError(f"application_id must be unique in {path}; repeated: {dupes}")
    return frame.sort_values(["event_timestamp", "application_id"], kind="stable").reset_index(drop=True)


def build_training_set(
    settings: Settings, store: FeatureStore, start: datetime | None = None, end: datetime | None = None
) -> TrainingSet:
    """Join the window's labelled applications point-in-time with the feature service (one row per application)."""
    from mlstack.features import (
        store as feature_store,  # Why here: `import feast` costs seconds that splitting and training never need
    )

    window_start, window_end = training_window(settings, start, end)
    applications = labelled_applications(settings, window_start, window_end)
    joined = feature_store.get_historical_features(store, applications)
    frame = _one_row_per_application(applications, joined, feature_store.FEATURE_SERVICE)
    service = store.get_feature_service(feature_store.FEATURE_SERVICE)
    feature_refs = [
        f"{projection.name_to_use()}:{feature.name}"
        for projection in service.feature_view_projections
        for feature in projection.features
    ]
    return TrainingSet(
        frame=frame,
        feature_service=service.name,
        feature_refs=feature_refs,
        window_start=window_start or frame["event_timestamp"].min().to_pydatetime(),
        window_end=window_end,
        fingerprint=fingerprint_frame(frame),
    )


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """``"<rows>:<first 16 hex of sha256>"`` of the frame's values, rows sorted by application_id (order-free)."""
    if "application_id" not in frame.columns:
        raise ValueError("fingerprint_frame needs an application_id column to order rows")
    ordered = frame.sort_values("application_id", kind="stable")
    hashes = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return f"{len(frame)}:{hashlib.sha256(hashes.tobytes()).hexdigest()[:16]}"


def split_by_time(
    frame: pd.DataFrame, validation_fraction: float, holdout_fraction: float, calibration_fraction: float = 0.0
) -> Split:
    """Split by event_timestamp into train < validation < calibration < holdout; equal timestamps stay in one part.

    Cut points are the timestamps at the ``1 - v - c - h``, ``1 - c - h`` and ``1 - h`` row
    quantiles; rows at a cut timestamp go to the later part, so fractions are approximate when
    timestamps tie. With ``calibration_fraction`` 0 there is no calibration part (an empty frame).
    """
    fractions = (validation_fraction, holdout_fraction)
    if not (
        all(0 < f < 1 for f in fractions)
        and 0 <= calibration_fraction < 1
        and validation_fraction + holdout_fraction + calibration_fraction < 1
    ):
        raise ValueError(
            "validation_fraction and holdout_fraction must be in (0, 1), calibration_fraction in [0, 1), with a "
            f"sum below 1, got {validation_fraction}, {holdout_fraction} and {calibration_fraction}"
        )
    if "event_timestamp" not in frame.columns:
        raise ValueError("split_by_time needs an event_timestamp column")
    if frame["event_timestamp"].isna().any():
        raise ValueError(f"event_timestamp has {int(frame['event_timestamp'].isna().sum())} missing value(s)")
    order = ["event_timestamp", "application_id"] if "application_id" in frame.columns else ["event_timestamp"]
    ordered = frame.sort_values(order, kind="stable").reset_index(drop=True)
    times = ordered["event_timestamp"]
    rows = len(ordered)
    names = (
        ["train", "validation", "calibration", "holdout"]
        if calibration_fraction
        else ["train", "validation", "holdout"]
    )
    parts = {name: ordered.iloc[:0] for name in ("train", "validation", "calibration", "holdout")}
    if rows:
        later = {"validation": validation_fraction + calibration_fraction + holdout_fraction}
        later["calibration"] = calibration_fraction + holdout_fraction
        later["holdout"] = holdout_fraction
        cuts = [times.iloc[min(rows - 1, round(rows * (1 - later[name])))] for name in names[1:]]
        bounds = [None, *cuts, None]
        for name, lower, upper in zip(names, bounds[:-1], bounds[1:], strict=True):
            inside = pd.Series(True, index=ordered.index)
            if lower is not None:
                inside &= times >= lower
            if upper is not None:
                inside &= times < upper
            parts[name] = ordered[inside]
    empty = [name for name in names if parts[name].empty]
    if empty:
        raise ValueError(
            f"split_by_time: the {' and '.join(empty)} part(s) would be empty ({rows} rows, "
            f"{times.nunique()} distinct event timestamps, validation_fraction={validation_fraction}, "
            f"holdout_fraction={holdout_fraction}, calibration_fraction={calibration_fraction}); more rows or distinct "
            "timestamps are needed"
        )
    return Split(**{name: part.reset_index(drop=True) for name, part in parts.items()})


@dataclass(frozen=True)
class TrainingParams:
    """LightGBM hyper-parameters and the determinism knobs of one training run."""

    learning_rate: float
    num_leaves: int
    min_data_in_leaf: int
    feature_fraction: float
    num_boost_round: int
    early_stopping_rounds: int
    seed: int
    num_threads: int = 2

    def lightgbm_params(self) -> dict[str, object]:
        """The native ``lightgbm.train`` params: binary objective, log loss on validation, deterministic."""
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "seed": self.seed,
            "deterministic": True,
            # Why: with `deterministic`, LightGBM asks for a fixed histogram layout instead of a timed choice.
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbose": -1,
        }

    def as_dict(self) -> dict[str, float | int]:
        """Flat name -> number mapping (for MLflow params)."""
        return {key: value for key, value in asdict(self).items()}


def training_params(settings: Settings) -> TrainingParams:
    """TrainingParams from the settings; the data seed doubles as the training seed."""
    return TrainingParams(
        learning_rate=settings.learning_rate,
        num_leaves=settings.num_leaves,
        min_data_in_leaf=settings.min_data_in_leaf,
        feature_fraction=settings.feature_fraction,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        seed=settings.seed,
    )


def train_booster(split: Split, params: TrainingParams, init_model: lightgbm.Booster | None = None) -> lightgbm.Booster:
    """Train a binary LightGBM booster on ``split.train``, early-stopped on ``split.validation`` log loss.

    The returned booster predicts with its best iteration by default (``booster.best_iteration``).
    With ``init_model``, training continues from that booster: its trees are kept and new ones are
    added on ``split.train`` (the result holds both).
    """
    train_set, validation_set = lightgbm_datasets(
        model_input.encode(split.train),
        split_labels(split.train, "train"),
        model_input.encode(split.validation),
        split_labels(split.validation, "validation"),
    )
    return fit_lightgbm(params.lightgbm_params(), params, train_set, validation_set, init_model)


def lightgbm_datasets(
    train_matrix: npt.NDArray[np.float64],
    train_labels: npt.NDArray[np.float64],
    validation_matrix: npt.NDArray[np.float64],
    validation_labels: npt.NDArray[np.float64],
) -> tuple[lightgbm.Dataset, lightgbm.Dataset]:
    """(train, validation) LightGBM datasets of encoded model inputs: feature names, categoricals, shared bins."""
    train_set = lightgbm.Dataset(
        train_matrix,
        label=train_labels,
        feature_name=list(model_input.FEATURES),
        categorical_feature=model_input.categorical_indices(),
        free_raw_data=True,
    )
    validation_set = lightgbm.Dataset(
        validation_matrix, label=validation_labels, reference=train_set, free_raw_data=True
    )
    return train_set, validation_set


def fit_lightgbm(
    native_params: dict[str, object],
    params: TrainingParams,
    train_set: lightgbm.Dataset,
    validation_set: lightgbm.Dataset,
    init_model: lightgbm.Booster | None = None,
) -> lightgbm.Booster:
    """``lightgbm.train`` with ``native_params``, early-stopped on the validation log loss (``params``' rounds).

    The one call every engine makes (this process, or each Ray worker with its network parameters added).
    """
    return lightgbm.train(
        native_params,
        train_set,
        num_boost_round=params.num_boost_round,
        valid_sets=[validation_set],
        valid_names=[VALIDATION_NAME],
        callbacks=[lightgbm.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)],
        init_model=init_model,
    )


def split_labels(frame: pd.DataFrame, part: str) -> npt.NDArray[np.float64]:
    """The 0/1 label column of one part of a split as float64; ValueError unless it holds both classes only."""
    if LABEL not in frame.columns:
        raise ValueError(f"the {part} frame has no {LABEL!r} label column")
    labels = frame[LABEL].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"the {part} frame's {LABEL!r} column must hold only 0/1 (no missing values)")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the {part} frame needs both classes of {LABEL!r}; it has {len(labels)} row(s) of one class")
    return labels


def _one_row_per_application(applications: pd.DataFrame, joined: pd.DataFrame, service: str) -> pd.DataFrame:
    """The joined frame in the applications' order and a fixed column order; raises unless rows match 1:1."""
    ids = joined["application_id"] if "application_id" in joined.columns else pd.Series(dtype="int64")
    duplicated = ids[ids.duplicated()].unique().tolist()
    lost = sorted(set(applications["application_id"]) - set(ids))
    if len(joined) != len(applications) or duplicated or lost:
        raise TrainingDataError(
            f"historical retrieval must return one row per application: got {len(joined)} rows for "
            f"{len(applications)} applications (repeated application_id: {duplicated[:5]}, missing: {lost[:5]})"
        )
    absent = [name for name in model_input.FEATURES if name not in joined.columns]
    if absent:
        raise TrainingDataError(
            f"feature service {service!r} did not return model input(s) {absent}; "
            "the service and mlstack.model_input.FEATURES disagree"
        )
    served = [name for name in model_input.FEATURES if name not in REQUEST_FIELDS]
    columns = [*ENTITY_COLUMNS, *REQUEST_FIELDS, *served, LABEL]
    extra = [name for name in joined.columns if name not in columns]
    ordered = joined.set_index("application_id").loc[applications["application_id"]].reset_index()
    return ordered[[*columns, *extra]]
