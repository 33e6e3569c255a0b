"""Calibration of a Booster's scores: fitted on a calibration slice, stored as JSON numbers, applied in one place.

A served model is "booster + calibrator". `default_probabilities` is the one function that turns
model inputs into default probabilities: training's evaluation, the service's scorer, the bento and
the batch path all call it, so they agree row for row. The calibrator maps the Booster's raw score
(its log-odds, `raw_score=True`) to a probability:

- `identity`: the Booster's own sigmoid (models registered before calibration existed load as this);
- `platt`: ``p = 1 / (1 + exp(a * z + b))`` on the raw score z (scikit-learn's sigmoid calibration);
- `isotonic`: a non-decreasing piecewise-linear map through knots (x, y) of z, clipped at both ends.

Fitting goes through scikit-learn (`FrozenEstimator` + `CalibratedClassifierCV`: the Booster is
never refitted), but what is stored is only the fitted numbers, as JSON: nothing is pickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import lightgbm
import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

CalibratorMethod = Literal["identity", "platt", "isotonic"]
CalibrationSetting = Literal["platt", "isotonic", "auto", "none"]
CALIBRATOR_METHODS: tuple[CalibratorMethod, ...] = get_args(CalibratorMethod)
CALIBRATOR_FILE = "calibrator.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from the Booster's raw score to a probability, as plain numbers (`to_json` / `from_json`)."""

    method: CalibratorMethod
    a: float = math.nan  # platt: slope on the raw score (negative when scores rank defaults upwards)
    b: float = math.nan  # platt: offset
    knots_x: tuple[float, ...] = ()  # isotonic: raw scores, increasing
    knots_y: tuple[float, ...] = ()  # isotonic: probabilities, non-decreasing
    rows: int = 0  # calibration rows it was fitted on
    defaults: int = 0  # of which defaulted

    def __post_init__(self) -> None:
        if self.method not in CALIBRATOR_METHODS:
            raise ValueError(f"calibrator method must be one of {', '.join(CALIBRATOR_METHODS)}, got {self.method!r}")
        if self.method == "platt" and not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"a Platt calibrator needs finite a and b, got a={self.a}, b={self.b}")
        if self.method == "isotonic":
            x, y = np.asarray(self.knots_x, dtype=np.float64), np.asarray(self.knots_y, dtype=np.float64)
            if len(x) < 1 or len(x) != len(y):
                raise ValueError(f"an isotonic calibrator needs as many knots_x as knots_y (>= 1): {len(x)}, {len(y)}")
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError("isotonic knots must be finite")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic knots must be non-decreasing, with knots_y in [0, 1]")

    @property
    def is_identity(self) -> bool:
        """True for the Booster's own probabilities (no calibration)."""
        return self.method == "identity"

    def describe(self) -> str:
        """A few words: the method and its numbers."""
        if self.method == "platt":
            return f"Platt a={self.a:.4f}, b={self.b:.4f} on {self.rows:,} rows ({self.defaults:,} defaults)"
        if self.method == "isotonic":
            return f"isotonic, {len(self.knots_x)} knots, on {self.rows:,} rows ({self.defaults:,} defaults)"
        return "none (the booster's own probabilities)"

    def apply(self, raw_scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Probabilities for raw scores (log-odds), shape kept; NaN stays NaN."""
        z = np.asarray(raw_scores, dtype=np.float64)
        if self.method == "platt":
            return np.asarray(_sigmoid(-(self.a * z + self.b)), dtype=np.float64)
        if self.method == "isotonic":
            mapped = np.interp(z, self.knots_x, self.knots_y)
            return np.asarray(np.where(np.isnan(z), np.nan, mapped), dtype=np.float64)
        return np.asarray(_sigmoid(z), dtype=np.float64)

    def to_dict(self) -> dict[str, object]:
        """The JSON document: format version, method and its numbers."""
        document: dict[str, object] = {"format": FORMAT_VERSION, "method": self.method, "rows": self.rows}
        document["defaults"] = self.defaults
        if self.method == "platt":
            document.update(a=self.a, b=self.b)
        if self.method == "isotonic":
            document.update(knots_x=list(self.knots_x), knots_y=list(self.knots_y))
        return document

    def to_json(self) -> str:
        """`to_dict` as JSON text (floats written exactly: `from_json` gives the same calibrator back)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Calibrator:
        """The calibrator `to_json` wrote; ValueError names what is missing or wrong."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the calibrator is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError(f"the calibrator must be a JSON object, got {type(document).__name__}")
        if document.get("format") != FORMAT_VERSION:
            raise ValueError(f"calibrator format must be {FORMAT_VERSION}, got {document.get('format')!r}")
        method = document.get("method")
        try:
            return cls(
                method=method,  # type: ignore[arg-type]  # checked in __post_init__
                a=float(document.get("a", math.nan)),
                b=float(document.get("b", math.nan)),
                knots_x=tuple(float(x) for x in document.get("knots_x", ())),
                knots_y=tuple(float(y) for y in document.get("knots_y", ())),
                rows=int(document.get("rows", 0)),
                defaults=int(document.get("defaults", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the calibrator document is invalid: {exc}") from exc


IDENTITY = Calibrator("identity")


def default_probabilities(
    booster: lightgbm.Booster, calibrator: Calibrator, matrix: npt.ArrayLike, num_threads: int | None = None
) -> npt.NDArray[np.float64]:
    """Default probabilities of encoded model inputs (rows x `model_input.FEATURES`), shape (rows,).

    The one place a served model ("booster + calibrator") is applied. With the identity calibrator
    this is exactly `booster.predict`, so versions registered before calibration score as before.
    """
    options: dict[str, Any] = {} if num_threads is None else {"num_threads": num_threads}
    if calibrator.is_identity:
        return np.asarray(booster.predict(matrix, **options), dtype=np.float64)
    return calibrator.apply(booster.predict(matrix, raw_score=True, **options))


def choose_method(setting: CalibrationSetting, rows: int, isotonic_min_rows: int) -> CalibratorMethod:
    """The method a calibration slice of `rows` gets under the setting (ValueError: isotonic on too few rows).

    `auto` is isotonic from `isotonic_min_rows` on, Platt below: isotonic regression has one
    free step per distinct score and over-fits small slices, Platt has two parameters.
    """
    if setting == "none":
        return "identity"
    if setting == "platt":
        return "platt"
    if setting == "auto":
        return "isotonic" if rows >= isotonic_min_rows else "platt"
    if rows < isotonic_min_rows:
        raise ValueError(
            f"MLSTACK_CALIBRATION=isotonic needs at least MLSTACK_CALIBRATION_ISOTONIC_MIN_ROWS={isotonic_min_rows} "
            f"calibration rows, the slice has {rows}: use platt or auto, or more data"
        )
    return "isotonic"


def fit_calibrator(raw_scores: npt.ArrayLike, labels: npt.ArrayLike, method: CalibratorMethod) -> Calibrator:
    """Fit `method` on raw scores (log-odds) and 0/1 labels of a calibration slice.

    scikit-learn does the fitting (`CalibratedClassifierCV` around a `FrozenEstimator` that only
    passes the scores through: nothing is refitted); the fitted numbers are read out of it.
    ValueError when the slice cannot define a calibrator (too few rows, one class only).
    """
    z = np.asarray(raw_scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"raw scores and labels differ in length: {z.size} vs {y.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("calibration labels must be 0/1 (no missing values)")
    if method == "identity":
        return IDENTITY
    finite = np.isfinite(z)
    z, y = z[finite], y[finite]
    defaults = int(y.sum())
    if min(defaults, len(y) - defaults) < 2:
        raise ValueError(
            f"the calibration slice needs at least two defaults and two non-defaults, got {defaults} of {len(y)} rows"
        )
    fitted = CalibratedClassifierCV(
        FrozenEstimator(_RawScores().fit(z.reshape(-1, 1), y)),
        method="sigmoid" if method == "platt" else "isotonic",
    ).fit(z.reshape(-1, 1), y.astype(np.int64))
    [calibrated] = fitted.calibrated_classifiers_
    [inner] = calibrated.calibrators
    if method == "platt":
        return Calibrator("platt", a=float(inner.a_), b=float(inner.b_), rows=len(y), defaults=defaults)
    return Calibrator(
        "isotonic",
        knots_x=tuple(float(x) for x in inner.X_thresholds_),
        knots_y=tuple(float(v) for v in inner.y_thresholds_),
        rows=len(y),
        defaults=defaults,
    )


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The logistic function without overflow warnings for large |x|."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


class _RawScores(ClassifierMixin, BaseEstimator):
    """A "classifier" whose decision function is its single input column: the Booster's raw score."""

    def fit(self, features: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]) -> _RawScores:
        """Nothing to learn; records the classes scikit-learn expects."""
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The raw scores themselves."""
        return np.asarray(features, dtype=np.float64)[:, 0]

    def predict(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """1 where the raw score is positive (needed by scikit-learn's estimator checks, not by calibration)."""
        return (self.decision_function(features) > 0).astype(np.int64)
