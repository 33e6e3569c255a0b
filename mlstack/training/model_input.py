"""The model's input contract: ordered feature names, categorical vocabularies, and the encoder.

Training and the online service both build the model matrix here, so a feature is encoded the same
way in both places: numbers as float64, categoricals as their index in a fixed vocabulary, and
anything missing or outside the vocabulary as NaN (LightGBM's "missing").
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlstack.data.schema import HOME_OWNERSHIP, LOAN_PURPOSES

# Order matters: it is the column order of the matrix the booster was trained on.
FEATURES: tuple[str, ...] = (
    # customer_profile
    "age",
    "annual_income",
    "employment_length_years",
    "home_ownership",
    # credit_history
    "credit_utilisation",
    "open_accounts",
    "delinquencies_2y",
    "bureau_score",
    "monthly_debt_payments",
    "accounts_in_collections",
    # zipcode_stats
    "median_income",
    "unemployment_rate",
    "population",
    "regional_default_rate",
    # on-demand (loan_ratios)
    "loan_to_income",
    "payment_to_income",
    # request fields
    "loan_amount",
    "loan_term_months",
    "loan_purpose",
)

CATEGORICAL: dict[str, tuple[str, ...]] = {
    "home_ownership": HOME_OWNERSHIP,
    "loan_purpose": LOAN_PURPOSES,
}

LABEL = "defaulted"
PREDICTION = "default_probability"  # the model's output, as profiled (and as the service's response names it)
# What is profiled with whylogs: the training reference profile, each live-traffic window (which adds
# the decision), and so what drift compares. The prediction's drift is the model's own.
PROFILE_COLUMNS: tuple[str, ...] = (*FEATURES, PREDICTION)

_INDEX = {name: i for i, name in enumerate(FEATURES)}
_VOCAB_INDEX = {name: {value: float(i) for i, value in enumerate(vocab)} for name, vocab in CATEGORICAL.items()}
# (column, feature, vocabulary lookup or None for numeric): precomputed so one row costs a plain loop.
_PLAN = tuple((i, name, _VOCAB_INDEX.get(name)) for i, name in enumerate(FEATURES))


class ModelInputError(ValueError):
    """The input cannot be encoded: a feature is absent or a numeric feature holds a non-number."""


def categorical_indices() -> list[int]:
    """Column positions of the categorical features in ``FEATURES``."""
    return [_INDEX[name] for name in CATEGORICAL]


def encode(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    """The model matrix of ``frame``: float64, shape (rows, len(FEATURES)), columns in ``FEATURES`` order.

    Extra columns are ignored; a missing column raises ModelInputError naming it.
    """
    missing = [name for name in FEATURES if name not in frame.columns]
    if missing:
        raise ModelInputError(f"model input is missing feature column(s): {missing}")
    out = np.empty((len(frame), len(FEATURES)), dtype=np.float64)
    for i, name, lookup in _PLAN:
        column = frame[name]
        if lookup is None:
            out[:, i] = _numeric_column(name, column)
        else:
            # The same per-value rule as encode_row (a plain loop beats pd.Categorical below ~10k rows).
            out[:, i] = [lookup.get(value, math.nan) if isinstance(value, str) else math.nan for value in column]
    return out


def encode_row(values: Mapping[str, object]) -> npt.NDArray[np.float64]:
    """The model matrix of one request, shape (1, len(FEATURES)); same result as ``encode`` of that row.

    Plain Python and numpy (no pandas), for the per-request path of the online service.
    """
    out = np.empty((1, len(FEATURES)), dtype=np.float64)
    row = out[0]
    try:
        for i, name, lookup in _PLAN:
            value = values[name]
            if lookup is None:
                row[i] = _numeric_value(name, value)
            else:
                row[i] = lookup.get(value, math.nan) if isinstance(value, str) else math.nan
    except KeyError:
        missing = [name for name in FEATURES if name not in values]
        raise ModelInputError(f"model input is missing feature(s): {missing}") from None
    return out


def _numeric_column(name: str, column: pd.Series) -> npt.NDArray[np.float64]:
    if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf":
        return column.to_numpy()  # plain numpy numbers: no missing-value markers but NaN, skip the scan
    try:
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise ModelInputError(f"feature {name!r} must be numeric: {error}") from None


def _numeric_value(name: str, value: object) -> float:
    if value is None or value is pd.NA:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ModelInputError(f"feature {name!r} must be numeric, got {value!r}") from None
