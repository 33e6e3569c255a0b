"""The offline data's file names, table schemas and vocabularies, and the rule that draws a loan request.

The synthetic generator (the applications the model is trained on) and the traffic simulator (the
requests it is served) both draw a request's amount, term and purpose with `draw_request_fields`:
one rule, so normal traffic matches training by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import pyarrow as pa

ZIPCODE_STATS_FILE = "zipcode_stats.parquet"
CUSTOMER_PROFILE_FILE = "customer_profile.parquet"
CREDIT_HISTORY_FILE = "credit_history.parquet"
LOAN_APPLICATIONS_FILE = "loan_applications.parquet"
DATA_FILES = (ZIPCODE_STATS_FILE, CUSTOMER_PROFILE_FILE, CREDIT_HISTORY_FILE, LOAN_APPLICATIONS_FILE)

REQUEST_FIELDS = ("loan_amount", "loan_term_months", "loan_purpose")  # what a loan request says besides its keys

# Each vocabulary is a Literal first, so that request models and type checkers use the same values.
HomeOwnership = Literal["RENT", "OWN", "MORTGAGE"]
LoanPurpose = Literal[
    "debt_consolidation", "credit_card", "home_improvement", "car", "medical", "small_business", "other"
]
LoanTerm = Literal[36, 60]
HOME_OWNERSHIP: tuple[HomeOwnership, ...] = get_args(HomeOwnership)
LOAN_PURPOSES: tuple[LoanPurpose, ...] = get_args(LoanPurpose)
LOAN_TERMS_MONTHS: tuple[LoanTerm, ...] = get_args(LoanTerm)
PURPOSE_WEIGHTS = (0.35, 0.22, 0.12, 0.1, 0.06, 0.05, 0.1)  # share of each of LOAN_PURPOSES among requests

# The request-field rule (see draw_request_fields).
LOAN_AMOUNT_RANGE = (1_000.0, 100_000.0)  # drawn amounts: what the model is trained on
MEDIAN_LOAN_TO_INCOME = 0.25
LOAN_TO_INCOME_LOG_SD = 0.5
LONG_TERM_SHARE = 0.25  # of loans up to LARGE_LOAN_AMOUNT; larger ones add LARGE_LOAN_LONG_TERM_EXTRA
LARGE_LOAN_AMOUNT = 25_000.0
LARGE_LOAN_LONG_TERM_EXTRA = 0.2

TIMESTAMP = pa.timestamp("us", tz="UTC")  # every timestamp column
ZIPCODE_STATS_SCHEMA = pa.schema(
    [
        ("zipcode", pa.string()),
        ("event_timestamp", TIMESTAMP),
        ("created_timestamp", TIMESTAMP),
        ("median_income", pa.float64()),
        ("unemployment_rate", pa.float64()),
        ("population", pa.int64()),
        ("regional_default_rate", pa.float64()),
    ]
)
CUSTOMER_PROFILE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("created_timestamp", TIMESTAMP),
        ("zipcode", pa.string()),
        ("age", pa.int64()),
        ("annual_income", pa.float64()),
        ("employment_length_years", pa.float64()),
        ("home_ownership", pa.string()),
    ]
)
CREDIT_HISTORY_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("created_timestamp", TIMESTAMP),
        ("credit_utilisation", pa.float64()),
        ("open_accounts", pa.int64()),
        ("delinquencies_2y", pa.int64()),
        ("bureau_score", pa.int64()),
        ("monthly_debt_payments", pa.float64()),
        ("accounts_in_collections", pa.int64()),
    ]
)
LOAN_APPLICATIONS_SCHEMA = pa.schema(
    [
        ("application_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("zipcode", pa.string()),
        ("event_timestamp", TIMESTAMP),
        ("loan_amount", pa.float64()),
        ("loan_term_months", pa.int64()),
        ("loan_purpose", pa.string()),
        ("defaulted", pa.int64()),
        ("default_timestamp", TIMESTAMP),
    ]
)
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    ZIPCODE_STATS_FILE: ZIPCODE_STATS_SCHEMA,
    CUSTOMER_PROFILE_FILE: CUSTOMER_PROFILE_SCHEMA,
    CREDIT_HISTORY_FILE: CREDIT_HISTORY_SCHEMA,
    LOAN_APPLICATIONS_FILE: LOAN_APPLICATIONS_SCHEMA,
}

# The valid range of each numeric column, (low, high) inclusive, high None for no upper bound: the
# data contract the validation gate checks (mlstack.data.validation), not the generator's parameters.
COLUMN_RANGES: dict[str, tuple[float, float | None]] = {
    "customer_id": (1, None),
    "application_id": (1, None),
    "median_income": (0.0, None),
    "unemployment_rate": (0.0, 1.0),
    "population": (0, None),
    "regional_default_rate": (0.0, 1.0),
    "age": (18, 120),
    "annual_income": (0.0, None),
    "employment_length_years": (0.0, 80.0),
    "credit_utilisation": (0.0, 1.2),
    "open_accounts": (0, None),
    "delinquencies_2y": (0, None),
    "bureau_score": (300, 850),
    "monthly_debt_payments": (0.0, None),
    "accounts_in_collections": (0, None),
    "loan_amount": LOAN_AMOUNT_RANGE,
}


@dataclass(frozen=True)
class RequestFields:
    """Drawn request fields, three arrays of one shape; `purpose_index` indexes LOAN_PURPOSES."""

    loan_amount: npt.NDArray[np.float64]
    loan_term_months: npt.NDArray[np.int64]
    purpose_index: npt.NDArray[np.intp]

    @property
    def loan_purpose(self) -> npt.NDArray[np.str_]:
        """The purposes as names, same shape."""
        return np.asarray(LOAN_PURPOSES)[self.purpose_index]


def draw_request_fields(
    rng: np.random.Generator,
    annual_income: npt.ArrayLike,
    size: int | tuple[int, ...],
    *,
    amount_factor: float = 1.0,
) -> RequestFields:
    """Amount, term and purpose of `size` loan requests by applicants of `annual_income` (broadcast to `size`).

    amount = income x LogNormal(log 0.25, 0.5) x amount_factor, rounded to 10 and clipped to
    1,000-100,000; term 60 months with probability 0.25 (0.45 above 25,000), else 36; purpose drawn
    with PURPOSE_WEIGHTS. The rng is drawn in that order: amounts, terms, purposes.
    """
    noise = np.exp(rng.normal(np.log(MEDIAN_LOAN_TO_INCOME), LOAN_TO_INCOME_LOG_SD, size))
    amount = np.asarray(annual_income, dtype=np.float64) * noise * amount_factor
    amount = np.clip(np.round(amount, -1), *LOAN_AMOUNT_RANGE)
    long_term = rng.random(size) < LONG_TERM_SHARE + LARGE_LOAN_LONG_TERM_EXTRA * (amount > LARGE_LOAN_AMOUNT)
    short, long = LOAN_TERMS_MONTHS
    term = np.where(long_term, long, short).astype(np.int64)
    purpose = rng.choice(len(LOAN_PURPOSES), size=size, p=PURPOSE_WEIGHTS)
    return RequestFields(amount, term, purpose)
