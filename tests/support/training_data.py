"""Synthetic model inputs for fast, hermetic training and evaluation tests (no Feast, no generator run)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlstack.data.schema import HOME_OWNERSHIP, LOAN_PURPOSES
from mlstack.training.dataset import TrainingParams

START = pd.Timestamp("2025-01-01", tz="UTC")


def synthetic_applications(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Applications with every model input and a label driven by utilisation and bureau score, oldest first."""
    rng = np.random.default_rng(seed)
    utilisation = rng.uniform(0, 1, rows)
    bureau = rng.normal(680, 60, rows).round()
    income = rng.lognormal(np.log(60_000), 0.4, rows).round(-1)
    amount = rng.uniform(2_000, 40_000, rows).round(-1)
    term = rng.choice([36, 60], rows)
    debt = rng.uniform(100, 2_000, rows)
    logit = -2.2 + 3.0 * (utilisation - 0.5) - (bureau - 680) / 30
    frame = pd.DataFrame(
        {
            "application_id": np.arange(1, rows + 1),
            "customer_id": rng.integers(1, rows // 2 + 2, rows),
            "zipcode": rng.choice(["10001", "20002", "30003"], rows),
            "event_timestamp": START + pd.to_timedelta(np.sort(rng.uniform(0, 365, rows)), unit="D"),
            "loan_amount": amount,
            "loan_term_months": term,
            "loan_purpose": rng.choice(LOAN_PURPOSES, rows),
            "age": rng.integers(21, 70, rows),
            "annual_income": income,
            "employment_length_years": rng.uniform(0, 20, rows).round(2),
            "home_ownership": rng.choice(HOME_OWNERSHIP, rows),
            "credit_utilisation": utilisation,
            "open_accounts": rng.integers(1, 12, rows),
            "delinquencies_2y": rng.poisson(0.3, rows),
            "bureau_score": bureau,
            "monthly_debt_payments": debt,
            "accounts_in_collections": rng.poisson(0.05, rows),
            "median_income": rng.normal(60_000, 8_000, rows),
            "unemployment_rate": rng.uniform(0.02, 0.1, rows),
            "population": rng.integers(5_000, 80_000, rows),
            "regional_default_rate": rng.uniform(0.05, 0.15, rows),
            "loan_to_income": amount / income,
            "payment_to_income": (amount / term + debt) / (income / 12),
            "defaulted": (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-logit))).astype(np.int64),
        }
    )
    return frame


FAST_PARAMS = TrainingParams(
    learning_rate=0.1,
    num_leaves=15,
    min_data_in_leaf=20,
    feature_fraction=0.9,
    num_boost_round=1000,
    early_stopping_rounds=20,
    seed=3,
)

# How far a Ray-trained model's holdout metrics may be from a local fit's on the same rows (why these
# bounds: tests/integration/test_ray_training.py's docstring; they catch a broken fit, not a subtle one).
RAY_LOG_LOSS_TOLERANCE = 0.01
RAY_AUC_TOLERANCE = 0.02
