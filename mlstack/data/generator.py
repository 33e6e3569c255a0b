"""Seeded, reproducible synthetic credit-risk data (four parquet tables, no downloads).

Tables written by :func:`generate_data` into ``out_dir`` (see ``docs/data.md``):

* ``zipcode_stats.parquet``: one row per zipcode per month (at the period start).
* ``customer_profile.parquet``: monthly profile snapshots per customer.
* ``credit_history.parquet``: monthly credit-bureau snapshots per customer (same timestamps).
* ``loan_applications.parquet``: loan requests with the ``defaulted`` label.

Time. History covers ``months`` periods of :data:`PERIOD` (30 days) counted back from ``end``:
the last one is ``[end - 30 days, end)``; the window is ``[first period start, end]``. A period
plays the part of a month; it is not a calendar month, so that a seed means the same world for any
``end``: the same customers, the same risk, every timestamp shifted with ``end``. A customer joins in
some month (60% in the first, the rest spread over the first half of the window) and then gets a
snapshot every month at ``month start + a fixed per-customer offset`` (0-27 days, 0-23 h,
0-59 min). About 5% of snapshots (never the first) are missing, so some gaps exceed 45 days.
``created_timestamp`` is ``event_timestamp`` plus 1-12 h of ingestion lag; snapshots not yet
ingested at ``end`` are dropped. Applications fall strictly after the customer's first snapshot
(by at least one day), not in the first two months of the window, and before ``end``. Their request
fields (amount, term, purpose) follow :func:`mlstack.data.schema.draw_request_fields`, the rule the
traffic simulator shares; file names, table schemas and vocabularies live in that module too.

Latent risk model. Each application's label is drawn as ``defaulted ~ Bernoulli(sigmoid(z))``
with ``z = latent_logit(...) + Normal(0, LOGIT_NOISE_SD)`` evaluated on point-in-time values:
the customer's latest snapshot with ``event_timestamp <= application time``, the zipcode stats of
the application's month (for the application's zipcode) and the request fields::

    latent_logit = LOGIT_INTERCEPT
                 + COEF_UTILISATION    * credit_utilisation
                 + COEF_DELINQUENCIES  * delinquencies_2y
                 + COEF_BUREAU         * (700 - bureau_score) / 100
                 + COEF_LOAN_TO_INCOME * log(loan_amount / annual_income)
                 + COEF_UNEMPLOYMENT   * unemployment_rate
                 + COEF_TERM_60        * (loan_term_months == 60)
                 + COEF_COLLECTIONS    * min(accounts_in_collections, 3)
                 + PURPOSE_EFFECTS[loan_purpose]

Coefficients are module constants below; they give a default rate of about 11% and a holdout ROC
AUC of about 0.75 for LightGBM on point-in-time features.

Leakage (deliberate). A defaulted loan has ``default_timestamp`` = application time + 2-12
months. Every credit snapshot after that instant shows it: ``accounts_in_collections`` += 1-3,
``delinquencies_2y`` += 1-3 and ``bureau_score`` -= 60-150. A join that reads snapshots after the
application time therefore sees the label. Labels are the loan's eventual outcome, so
``default_timestamp`` may fall after ``end``.

Reproducibility. Zipcodes come from ``SeedSequence([seed, 0])`` and customer chunk ``i`` from
``SeedSequence([seed, 1, i])``: the same arguments give the same data values (``chunk_customers``
is one of the arguments). Memory stays bounded: each chunk of customers is appended as one parquet
row group, and files appear under their final names only once complete (temp file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from mlstack.data.schema import (
    CREDIT_HISTORY_FILE,
    CREDIT_HISTORY_SCHEMA,
    CUSTOMER_PROFILE_FILE,
    CUSTOMER_PROFILE_SCHEMA,
    HOME_OWNERSHIP,
    LOAN_APPLICATIONS_FILE,
    LOAN_APPLICATIONS_SCHEMA,
    LOAN_PURPOSES,
    TIMESTAMP,
    ZIPCODE_STATS_FILE,
    ZIPCODE_STATS_SCHEMA,
    LoanPurpose,
    draw_request_fields,
)

# Latent risk model (see module docstring); tuned for ~11% defaults and a PIT AUC of ~0.75.
LOGIT_INTERCEPT = -3.2
COEF_UTILISATION = 1.3
COEF_DELINQUENCIES = 0.25
COEF_BUREAU = 0.55  # per 100 bureau points below 700
COEF_LOAN_TO_INCOME = 0.55
COEF_UNEMPLOYMENT = 8.0
COEF_TERM_60 = 0.35
COEF_COLLECTIONS = 0.50  # per account in collections, capped at 3
PURPOSE_EFFECTS: dict[LoanPurpose, float] = {
    "debt_consolidation": 0.10,
    "credit_card": 0.0,
    "home_improvement": -0.20,
    "car": -0.30,
    "medical": 0.20,
    "small_business": 0.50,
    "other": 0.10,
}
LOGIT_NOISE_SD = 0.6

SNAPSHOT_MISSING_RATE = 0.05
DEFAULT_DELAY_MONTHS = (2.0, 12.0)
DAYS_PER_MONTH = 30.4375  # a month of DEFAULT_DELAY_MONTHS (the mean Gregorian month)
# A loan's outcome is final (matured) once this has passed since its application: the latest a default comes.
OUTCOME_WINDOW = timedelta(days=DEFAULT_DELAY_MONTHS[1] * DAYS_PER_MONTH)
MAX_APPLICATIONS_PER_CUSTOMER = 3

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_US_PER_MONTH = int(DAYS_PER_MONTH * _US_PER_DAY)
# Why fixed 30-day periods, not calendar months: a seed must mean the same world whatever the end
# date. With calendar months the last month was cut at ``end`` (1 day of it on the 1st, 30 on the
# 31st), so the number of snapshots and applications, and the model trained on them, moved with the
# calendar. Counted back from ``end``, every timestamp moves with ``end`` and nothing else changes.
PERIOD = timedelta(days=30)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DataSummary:
    """Where the four tables were written, their row counts and the label rate."""

    zipcode_stats_path: Path
    customer_profile_path: Path
    credit_history_path: Path
    loan_applications_path: Path
    zipcode_stats_rows: int
    customer_profile_rows: int
    credit_history_rows: int
    loan_applications_rows: int
    customers: int
    label_rate: float
    start: datetime
    end: datetime


def latent_logit(
    *,
    credit_utilisation: npt.ArrayLike,
    delinquencies_2y: npt.ArrayLike,
    bureau_score: npt.ArrayLike,
    accounts_in_collections: npt.ArrayLike,
    loan_amount: npt.ArrayLike,
    annual_income: npt.ArrayLike,
    unemployment_rate: npt.ArrayLike,
    loan_term_months: npt.ArrayLike,
    loan_purpose: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Default log-odds of the latent risk model without noise; returns the broadcast shape."""
    purposes = np.asarray(loan_purpose, dtype=str)
    uniques, inverse = np.unique(purposes, return_inverse=True)
    unknown = sorted(set(uniques.tolist()) - PURPOSE_EFFECTS.keys())
    if unknown:
        raise ValueError(f"loan_purpose: unknown value(s) {unknown}; expected one of {LOAN_PURPOSES}")
    purpose_effect = np.array([PURPOSE_EFFECTS[p] for p in uniques], dtype=np.float64)[inverse]
    purpose_effect = purpose_effect.reshape(purposes.shape)
    return (
        LOGIT_INTERCEPT
        + COEF_UTILISATION * np.asarray(credit_utilisation, dtype=np.float64)
        + COEF_DELINQUENCIES * np.asarray(delinquencies_2y, dtype=np.float64)
        + COEF_BUREAU * (700.0 - np.asarray(bureau_score, dtype=np.float64)) / 100.0
        + COEF_LOAN_TO_INCOME
        * np.log(np.asarray(loan_amount, dtype=np.float64) / np.asarray(annual_income, dtype=np.float64))
        + COEF_UNEMPLOYMENT * np.asarray(unemployment_rate, dtype=np.float64)
        + COEF_TERM_60 * (np.asarray(loan_term_months) == 60)
        + COEF_COLLECTIONS * np.minimum(np.asarray(accounts_in_collections, dtype=np.float64), 3.0)
        + purpose_effect
    )


def zipcode_count(customers: int) -> int:
    """Number of distinct zipcodes generated for ``customers`` customers."""
    return min(2000, max(50, customers // 200))


def month_starts(end: datetime, months: int) -> list[datetime]:
    """The ``months`` period starts (UTC) of the history window ending at ``end``, oldest first.

    A period is a fixed :data:`PERIOD` counted back from ``end``, not a calendar month: calendar
    months differ in length and ``end`` falls anywhere in one, so they would make the generated
    world depend on the date it ends (see the module docstring, "Time").
    """
    end = end.astimezone(UTC)
    return [end - (months - k) * PERIOD for k in range(months)]


def generate_data(
    out_dir: Path,
    *,
    customers: int,
    months: int,
    end: datetime,
    seed: int,
    chunk_customers: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> DataSummary:
    """Write the four synthetic tables into ``out_dir`` and return their paths and row counts."""
    _validate(customers=customers, months=months, end=end, seed=seed, chunk_customers=chunk_customers)
    customers, months, seed, chunk_customers = int(customers), int(months), int(seed), int(chunk_customers)
    end = end.astimezone(UTC)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    starts = month_starts(end, months)
    month_us = np.array([_to_us(s) for s in starts], dtype=np.int64)
    end_us = _to_us(end)

    finals = {
        "zipcode_stats": out_dir / ZIPCODE_STATS_FILE,
        "customer_profile": out_dir / CUSTOMER_PROFILE_FILE,
        "credit_history": out_dir / CREDIT_HISTORY_FILE,
        "loan_applications": out_dir / LOAN_APPLICATIONS_FILE,
    }
    schemas = {
        "zipcode_stats": ZIPCODE_STATS_SCHEMA,
        "customer_profile": CUSTOMER_PROFILE_SCHEMA,
        "credit_history": CREDIT_HISTORY_SCHEMA,
        "loan_applications": LOAN_APPLICATIONS_SCHEMA,
    }
    temps = {name: path.with_name(f"{path.name}.{os.getpid()}.tmp") for name, path in finals.items()}
    rows = dict.fromkeys(finals, 0)
    writers: dict[str, pq.ParquetWriter] = {}
    defaults = 0
    try:
        for name, schema in schemas.items():
            writers[name] = pq.ParquetWriter(temps[name], schema)

        zips = _generate_zipcodes(
            np.random.default_rng(np.random.SeedSequence([seed, 0])), zipcode_count(customers), month_us
        )
        zip_table = _zipcode_table(zips, month_us)
        writers["zipcode_stats"].write_table(zip_table)
        rows["zipcode_stats"] = zip_table.num_rows

        next_application_id = 1
        for chunk_index, first in enumerate(range(0, customers, chunk_customers)):
            n = min(chunk_customers, customers - first)
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1, chunk_index]))
            chunk = _generate_chunk(rng, first + 1, n, month_us, end_us, zips, next_application_id)
            for name in ("customer_profile", "credit_history", "loan_applications"):
                writers[name].write_table(chunk[name])
                rows[name] += chunk[name].num_rows
            next_application_id += chunk["loan_applications"].num_rows
            defaults += int(np.asarray(chunk["loan_applications"]["defaulted"]).sum())
            if progress is not None:
                progress(first + n, customers)

        for name in list(writers):
            writers.pop(name).close()
            _fsync(temps[name])
        for name, final in finals.items():
            os.replace(temps[name], final)
    finally:
        # Why: a crash must leave neither half-written finals nor stray temp files behind.
        for writer in writers.values():
            with contextlib.suppress(Exception):  # already failing: keep the original error
                writer.close()
        for temp in temps.values():
            temp.unlink(missing_ok=True)

    applications = rows["loan_applications"]
    return DataSummary(
        zipcode_stats_path=finals["zipcode_stats"],
        customer_profile_path=finals["customer_profile"],
        credit_history_path=finals["credit_history"],
        loan_applications_path=finals["loan_applications"],
        zipcode_stats_rows=rows["zipcode_stats"],
        customer_profile_rows=rows["customer_profile"],
        credit_history_rows=rows["credit_history"],
        loan_applications_rows=applications,
        customers=customers,
        label_rate=defaults / applications if applications else 0.0,
        start=starts[0],
        end=end,
    )


# --------------------------------------------------------------------------- internals


def _validate(*, customers: int, months: int, end: datetime, seed: int, chunk_customers: int) -> None:
    _check_int("customers", customers, 1)
    # Why 3: applications avoid the first two months, so at least one more month is needed.
    _check_int("months", months, 3)
    _check_int("chunk_customers", chunk_customers, 1)
    _check_int("seed", seed, 0)
    if not isinstance(end, datetime) or end.tzinfo is None or end.utcoffset() is None:
        raise ValueError(f"end must be a timezone-aware datetime (UTC), got {end!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ts(us: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    return pa.array(us.astype("datetime64[us]"), type=TIMESTAMP, mask=mask)


def _walk(rng: np.random.Generator, shape: tuple[int, int], drift: npt.ArrayLike, sd: float) -> npt.NDArray:
    """Random walk along axis 1 that starts at exactly 0 in column 0."""
    steps = rng.normal(0.0, sd, shape) + np.asarray(drift, dtype=np.float64)
    steps[:, 0] = 0.0
    return np.cumsum(steps, axis=1)


@dataclass(frozen=True)
class _Zipcodes:
    names: pa.Array  # (Z,) strings
    population: npt.NDArray[np.int64]  # (Z, M)
    median_income: npt.NDArray[np.float64]  # (Z, M)
    unemployment: npt.NDArray[np.float64]  # (Z, M)
    regional_default_rate: npt.NDArray[np.float64]  # (Z, M)


def _generate_zipcodes(rng: np.random.Generator, count: int, month_us: npt.NDArray[np.int64]) -> _Zipcodes:
    months = len(month_us)
    codes = np.sort(rng.choice(np.arange(10_000, 100_000), size=count, replace=False))
    population = np.round(
        rng.lognormal(np.log(20_000), 0.6, count)[:, None] * np.exp(_walk(rng, (count, months), 0.0008, 0.002))
    ).astype(np.int64)
    log_income = rng.normal(np.log(62_000), 0.3, count)
    median_income = np.round(np.exp(log_income[:, None] + _walk(rng, (count, months), 0.002, 0.004)), 0)
    # Why: poorer zipcodes have more unemployment; a shared macro walk moves all regions together.
    base = np.clip(0.055 - 0.04 * (log_income - np.log(62_000)) + rng.normal(0, 0.015, count), 0.015, 0.2)
    macro = _walk(rng, (1, months), 0.0, 0.002)
    unemployment = np.round(np.clip(base[:, None] + macro + _walk(rng, (count, months), 0.0, 0.0015), 0.01, 0.3), 4)
    lagged = np.concatenate([unemployment[:, :1], unemployment[:, :-1]], axis=1)
    regional = 0.03 + 0.8 * lagged + rng.normal(0, 0.005, count)[:, None] + rng.normal(0, 0.002, (count, months))
    return _Zipcodes(
        names=pa.array(codes.astype(str)),
        population=population,
        median_income=median_income,
        unemployment=unemployment,
        regional_default_rate=np.round(np.clip(regional, 0.005, 0.4), 4).astype(np.float64, copy=False),
    )


def _zipcode_table(zips: _Zipcodes, month_us: npt.NDArray[np.int64]) -> pa.Table:
    count, months = zips.unemployment.shape
    zip_index = np.repeat(np.arange(count), months)
    event_us = np.tile(month_us, count)
    return pa.Table.from_arrays(
        [
            zips.names.take(pa.array(zip_index)),
            _ts(event_us),
            _ts(event_us),  # published as of the month start: the regional rate is already lagged
            pa.array(zips.median_income.ravel()),
            pa.array(zips.unemployment.ravel()),
            pa.array(zips.population.ravel()),
            pa.array(zips.regional_default_rate.ravel()),
        ],
        schema=ZIPCODE_STATS_SCHEMA,
    )


def _generate_chunk(
    rng: np.random.Generator,
    first_id: int,
    n: int,
    month_us: npt.NDArray[np.int64],
    end_us: int,
    zips: _Zipcodes,
    first_application_id: int,
) -> dict[str, pa.Table]:
    """Tables for customers ``first_id .. first_id + n - 1``; arrays are (customer, month)."""
    months = len(month_us)
    month = np.arange(months)
    rows = np.arange(n)
    customer_id = first_id + rows.astype(np.int64)

    # Snapshot timing: month start + a fixed per-customer offset; some snapshots missing.
    start_month = np.where(rng.random(n) < 0.6, 0, rng.integers(1, months // 2 + 1, n))
    offset_us = (
        rng.integers(0, 28, n) * _US_PER_DAY
        + rng.integers(0, 24, n) * _US_PER_HOUR
        + rng.integers(0, 60, n) * 60_000_000
    )
    event_us = month_us[None, :] + offset_us[:, None]
    created_us = event_us + rng.integers(1, 13, (n, months)) * _US_PER_HOUR
    joined = month[None, :] >= start_month[:, None]
    kept = (rng.random((n, months)) >= SNAPSHOT_MISSING_RATE) | (month[None, :] == start_month[:, None])
    present = joined & kept & (created_us <= end_us)
    latest_present = np.maximum.accumulate(np.where(present, month[None, :], -1), axis=1)

    # Zipcode: weighted by population; 10% of customers move once.
    weights = zips.population[:, 0] / zips.population[:, 0].sum()
    zip_first = rng.choice(len(weights), size=n, p=weights)
    zip_second = rng.choice(len(weights), size=n, p=weights)
    move_month = np.where(rng.random(n) < 0.1, rng.integers(1, months, n), months)
    zip_now = np.where(month[None, :] >= move_month[:, None], zip_second[:, None], zip_first[:, None])

    # Profile. ``quality`` is the hidden creditworthiness that ties the columns together.
    quality = rng.normal(0.0, 1.0, n)
    age_first = np.clip(np.round(21 + rng.gamma(3.0, 7.0, n)), 21, 80).astype(np.int64)
    age = age_first[:, None] + (month[None, :] + rng.integers(0, 12, n)[:, None]) // 12
    p_rent = np.clip(0.75 - 0.012 * (age_first - 21), 0.15, 0.75)
    p_own = np.clip(0.05 + 0.004 * (age_first - 21), 0.05, 0.3)
    draw = rng.random(n)
    home = np.where(draw < p_rent, 0, np.where(draw < p_rent + p_own, 1, 2))
    log_income = (
        np.log(zips.median_income[zip_first, 0])
        + 0.25 * quality
        + 0.01 * np.clip(age_first - 40, -15, 20)
        + rng.normal(0.0, 0.4, n)
    )
    growth = rng.normal(0.0025, 0.0015, n)[:, None]
    income = np.maximum(np.round(np.exp(log_income[:, None] + _walk(rng, (n, months), growth, 0.01)), -1), 8_000.0)
    employment_first = np.minimum(rng.gamma(2.0, 2.5, n), age_first - 18)
    job_change = rng.random((n, months)) < 0.008
    job_change[:, 0] = False
    last_change = np.maximum.accumulate(np.where(job_change, month[None, :], -1), axis=1)
    employment = np.round(
        np.where(last_change < 0, employment_first[:, None] + month[None, :] / 12, (month - last_change) / 12),
        3,
    )

    # Credit history: random walks driven by quality.
    utilisation = np.round(
        1.2 / (1 + np.exp(-(-0.9 - 0.7 * quality + rng.normal(0, 0.6, n))[:, None] - _walk(rng, (n, months), 0, 0.12))),
        4,
    )
    delinquency_rate = np.minimum(0.012 * np.exp(-0.9 * quality + rng.normal(0, 0.5, n)), 0.5)
    events = rng.random((n, months + 24)) < delinquency_rate[:, None]
    counts = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(events, axis=1)], axis=1)
    delinquencies = counts[:, 25 : months + 25] - counts[:, 1 : months + 1]  # 24-month rolling sum
    account_steps = (rng.random((n, months)) < 0.03).astype(np.int64) - (rng.random((n, months)) < 0.025)
    account_steps[:, 0] = 0
    open_accounts = np.maximum(1 + rng.poisson(4, n)[:, None] + np.cumsum(account_steps, axis=1), 0)
    bureau = np.clip(
        np.round(
            700
            + 55 * quality[:, None]
            + rng.normal(0, 25, n)[:, None]
            + _walk(rng, (n, months), 0, 4.0)
            - 30 * delinquencies
            - 90 * (utilisation - 0.35)
        ),
        300,
        850,
    ).astype(np.int64)
    debt_to_income = np.clip(rng.normal(0.18 - 0.05 * quality, 0.06), 0.02, 0.6)
    debt_payments = np.round(income / 12 * debt_to_income[:, None] * (0.6 + 0.8 * utilisation), 2)
    collections_rate = np.clip(0.03 * np.exp(-0.8 * quality - 0.32), 0, 0.5)
    collections_first = (rng.random(n) < collections_rate) * (1 + rng.poisson(0.3, n))
    collections = np.repeat(collections_first[:, None], months, axis=1).astype(np.int64)

    # Applications: up to 3 per customer, sorted in time, drawn after the first snapshot.
    slots = MAX_APPLICATIONS_PER_CUSTOMER
    n_apps = np.minimum(rng.poisson(1.0, n), slots)
    first_event = event_us[rows, start_month]
    low = np.maximum(month_us[min(2, months - 1)], first_event + _US_PER_DAY)
    n_apps = np.where(low < end_us, n_apps, 0)
    span = np.maximum(end_us - low, 0)
    valid = np.arange(slots)[None, :] < n_apps[:, None]
    app_us = low[:, None] + (rng.random((n, slots)) * span[:, None]).astype(np.int64)
    # Why the sentinel: sorting must only reorder a customer's real applications, not pick early ones.
    app_us = np.sort(np.where(valid, app_us, np.iinfo(np.int64).max), axis=1)
    app_us = np.where(valid, app_us, low[:, None])
    request = draw_request_fields(rng, income[:, :1], (n, slots))
    amount, term, purpose = request.loan_amount, request.loan_term_months, request.purpose_index
    noise = rng.normal(0.0, LOGIT_NOISE_SD, (n, slots))
    label_draw = rng.random((n, slots))
    delay_us = (rng.uniform(*DEFAULT_DELAY_MONTHS, (n, slots)) * _US_PER_MONTH).astype(np.int64)
    bump_collections = rng.integers(1, 4, (n, slots))
    bump_delinquencies = rng.integers(1, 4, (n, slots))
    drop_bureau = rng.integers(60, 151, (n, slots))

    app_zip = np.zeros((n, slots), np.int64)
    defaulted = np.zeros((n, slots), bool)
    purpose_names = np.array(LOAN_PURPOSES)
    # Why a loop over slots (<= 3), not rows: a default changes the snapshots a later application sees.
    for slot in range(slots):
        t = app_us[:, slot]
        snapshot_month = np.clip(_month_index(month_us, t - offset_us), 0, months - 1)
        pit = np.maximum(latest_present[rows, snapshot_month], 0)
        app_zip[:, slot] = zip_now[rows, snapshot_month]
        calendar_month = np.clip(_month_index(month_us, t), 0, months - 1)
        logit = latent_logit(
            credit_utilisation=utilisation[rows, pit],
            delinquencies_2y=delinquencies[rows, pit],
            bureau_score=bureau[rows, pit],
            accounts_in_collections=collections[rows, pit],
            loan_amount=amount[:, slot],
            annual_income=income[rows, pit],
            unemployment_rate=zips.unemployment[app_zip[:, slot], calendar_month],
            loan_term_months=term[:, slot],
            loan_purpose=purpose_names[purpose[:, slot]],
        )
        hit = valid[:, slot] & (label_draw[:, slot] < 1 / (1 + np.exp(-(logit + noise[:, slot]))))
        defaulted[:, slot] = hit
        after = hit[:, None] & (event_us > (t + delay_us[:, slot])[:, None])
        collections += after * bump_collections[:, slot, None]
        delinquencies += after * bump_delinquencies[:, slot, None]
        bureau = np.maximum(bureau - after * drop_bureau[:, slot, None], 300)

    flat = present.ravel()
    ids = np.repeat(customer_id, months)[flat]
    snap_event = _ts(event_us.ravel()[flat])
    snap_created = _ts(created_us.ravel()[flat])
    profile = pa.Table.from_arrays(
        [
            pa.array(ids),
            snap_event,
            snap_created,
            zips.names.take(pa.array(zip_now.ravel()[flat])),
            pa.array(age.ravel()[flat]),
            pa.array(income.ravel()[flat]),
            pa.array(employment.ravel()[flat]),
            pa.array(np.array(HOME_OWNERSHIP)).take(pa.array(np.repeat(home, months)[flat])),
        ],
        schema=CUSTOMER_PROFILE_SCHEMA,
    )
    credit = pa.Table.from_arrays(
        [
            pa.array(ids),
            snap_event,
            snap_created,
            pa.array(utilisation.ravel()[flat]),
            pa.array(open_accounts.ravel()[flat].astype(np.int64)),
            pa.array(delinquencies.ravel()[flat].astype(np.int64)),
            pa.array(bureau.ravel()[flat]),
            pa.array(debt_payments.ravel()[flat]),
            pa.array(collections.ravel()[flat]),
        ],
        schema=CREDIT_HISTORY_SCHEMA,
    )
    app_flat = valid.ravel()
    app_defaulted = defaulted.ravel()[app_flat]
    applications = pa.Table.from_arrays(
        [
            pa.array(first_application_id + np.arange(int(app_flat.sum()), dtype=np.int64)),
            pa.array(np.repeat(customer_id, slots)[app_flat]),
            zips.names.take(pa.array(app_zip.ravel()[app_flat])),
            _ts(app_us.ravel()[app_flat]),
            pa.array(amount.ravel()[app_flat]),
            pa.array(term.ravel()[app_flat].astype(np.int64)),
            pa.array(purpose_names).take(pa.array(purpose.ravel()[app_flat])),
            pa.array(app_defaulted.astype(np.int64)),
            _ts((app_us + delay_us).ravel()[app_flat], mask=~app_defaulted),
        ],
        schema=LOAN_APPLICATIONS_SCHEMA,
    )
    return {"customer_profile": profile, "credit_history": credit, "loan_applications": applications}


def _month_index(month_us: npt.NDArray[np.int64], us: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Index of the last month start at or before each instant (-1 if before the first)."""
    return np.searchsorted(month_us, us, side="right") - 1
