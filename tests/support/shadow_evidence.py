"""Simulated shadow evidence with known answers: logged champion/challenger scores and their booked outcomes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from mlstack.monitoring.shadow import ShadowPair
from mlstack.training.promotion import Floors, GateRule

RULE = GateRule(confidence=0.95, auc_margin=0.01, min_defaults=30, bootstrap_rounds=400, bootstrap_seed=0)
FLOORS = Floors(min_auc=0.6, max_calibration_error=0.1)
PAIR = ShadowPair("1", "2")
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
APPLIED = datetime(2024, 1, 1, tzinfo=UTC)  # every simulated application is from 2024: matured by 2025-06


def simulated(n: int, seed: int, challenger: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(logged scores, loan book) for n applications in 2024 with known default probabilities.

    The outcome is drawn from the true probability. The champion's score is the truth pulled halfway to
    the base rate (ranks the same, badly calibrated); the challenger's is the truth ("better") or the
    champion's own score ("equal").
    """
    rng = np.random.default_rng(seed)
    truth = 1 / (1 + np.exp(-(rng.normal(-2.0, 1.2, n))))
    defaulted = (rng.random(n) < truth).astype(np.int64)
    champion_p = 0.7 * truth + 0.3 * truth.mean()
    challenger_p = truth if challenger == "better" else champion_p
    applied = pd.Timestamp(APPLIED) + pd.to_timedelta(np.arange(n) * 600, unit="s")
    book = pd.DataFrame(
        {
            "application_id": np.arange(1, n + 1),
            "customer_id": np.arange(1, n + 1),
            "zipcode": "94107",
            "loan_amount": 10_000.0,
            "loan_term_months": 36,
            "loan_purpose": "car",
            "event_timestamp": applied,
            "defaulted": defaulted,
        }
    )
    records = book.drop(columns=["application_id", "defaulted"]).rename(columns={"event_timestamp": "scored_at"})
    records["scored_at"] = records["scored_at"] + pd.Timedelta(seconds=2)  # the service scores after the client sent
    records = records.assign(
        champion_version="1",
        challenger_version="2",
        champion_probability=champion_p,
        challenger_probability=challenger_p,
        champion_decision=np.where(champion_p >= 0.5, "decline", "approve"),
        challenger_decision=np.where(challenger_p >= 0.5, "decline", "approve"),
        decided_by="champion",
        ab_share=0.0,
    )
    return records, book
