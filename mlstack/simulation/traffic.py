"""Simulated live traffic and its delayed outcomes, in a scenario: `normal` or `recession`.

A run has three parts:
1. `prepare_scenario`: for a drift scenario, write fresh feature snapshots (time-stamped now) into
   the offline data — lower incomes, higher unemployment in some zipcodes, higher utilisation — so
   that materialising them moves the online store into the new regime. `normal` writes nothing.
2. `send_traffic`: POST loan applications to the running service at a fixed rate (open loop:
   request i is due at start + i / rate, whatever the service's latency) for a duration.
3. `realise_outcomes` + `append_applications`: for every application the service answered, draw
   whether it defaulted — in the scenario's own risk regime (in a recession the same features mean
   more risk) — and append it to the labelled applications, its default later in simulated time.
   A retrained model can then learn the new regime.

Simplification, on purpose: every answered application is booked, approved or declined alike, so
the labels carry no selection bias from the champion's decisions.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlstack.data import generator, schema
from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.simulation.scenarios import SCENARIOS, Scenario

if TYPE_CHECKING:
    import httpx


class TrafficError(StackError):
    """Traffic could not be prepared or sent (no data, no service); the message says what to do."""


def get_scenario(name: str) -> Scenario:
    """The named scenario, or a TrafficError listing the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise TrafficError(f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)}") from None


@dataclass(frozen=True)
class Snapshots:
    """Latest feature values: one row per customer (profile + credit history) and per zipcode."""

    customers: pd.DataFrame
    zipcodes: pd.DataFrame


_KEYS = ("customer_id", "customer_id", "zipcode")


def latest_snapshots(data_dir: Path) -> Snapshots:
    """Each customer's latest profile and credit snapshot (inner join), and each zipcode's latest stats."""
    paths = [
        data_dir / name
        for name in (schema.CUSTOMER_PROFILE_FILE, schema.CREDIT_HISTORY_FILE, schema.ZIPCODE_STATS_FILE)
    ]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise TrafficError(f"offline data not found ({', '.join(missing)}): run `mlstack data generate` first")
    profile, credit, zipcodes = (_latest(pd.read_parquet(path), key) for path, key in zip(paths, _KEYS, strict=True))
    customers = profile.merge(credit.drop(columns=["event_timestamp", "created_timestamp"]), on="customer_id")
    return Snapshots(customers.reset_index(drop=True), zipcodes.reset_index(drop=True))


def _latest(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values(["event_timestamp", "created_timestamp"]).drop_duplicates(key, keep="last")


def shift_snapshots(snapshots: Snapshots, scenario: Scenario, at: datetime, seed: int) -> Snapshots:
    """The scenario's new snapshots, time-stamped `at` (event and created): a pure function of its inputs."""
    rng = np.random.default_rng(seed)
    zipcodes = snapshots.zipcodes.copy()
    hit = rng.random(len(zipcodes)) < scenario.hit_zipcode_share
    shift = np.where(hit, scenario.unemployment_shift_hit, scenario.unemployment_shift_other)
    zipcodes["unemployment_rate"] = np.round(np.clip(zipcodes["unemployment_rate"] + shift, 0.01, 0.4), 4)
    zipcodes["regional_default_rate"] = np.round(
        np.clip(zipcodes["regional_default_rate"] + 0.8 * shift, 0.005, 0.5), 4
    )
    zipcodes["median_income"] = np.round(
        zipcodes["median_income"] * np.where(hit, scenario.zip_income_factor_hit, 1.0), 0
    )
    customers = snapshots.customers.copy()
    hit_codes = set(zipcodes.loc[hit, "zipcode"])
    in_hit = customers["zipcode"].isin(hit_codes).to_numpy()
    factor = np.where(in_hit, scenario.income_factor_hit, scenario.income_factor_other)
    customers["annual_income"] = np.maximum(np.round(customers["annual_income"] * factor, -1), 8_000.0)
    customers["monthly_debt_payments"] = np.round(customers["monthly_debt_payments"] * factor, 2)
    customers["credit_utilisation"] = np.round(
        np.clip(customers["credit_utilisation"] + scenario.utilisation_shift, 0, 1.2), 4
    )
    for frame in (customers, zipcodes):
        frame["event_timestamp"] = pd.Timestamp(at)
        frame["created_timestamp"] = pd.Timestamp(at)
    return Snapshots(customers, zipcodes)


def append_snapshots(data_dir: Path, snapshots: Snapshots) -> dict[str, int]:
    """Append new snapshots to the three feature tables (each file replaced atomically); rows per file."""
    tables = {
        schema.CUSTOMER_PROFILE_FILE: (snapshots.customers, schema.CUSTOMER_PROFILE_SCHEMA),
        schema.CREDIT_HISTORY_FILE: (snapshots.customers, schema.CREDIT_HISTORY_SCHEMA),
        schema.ZIPCODE_STATS_FILE: (snapshots.zipcodes, schema.ZIPCODE_STATS_SCHEMA),
    }
    return {name: _append(data_dir / name, frame, schema) for name, (frame, schema) in tables.items()}


def _append(path: Path, frame: pd.DataFrame, table_schema: pa.Schema) -> int:
    """Rewrite `path` with `frame`'s rows (only the schema's columns) appended; temp file + rename."""
    new = pa.Table.from_pandas(frame[table_schema.names], schema=table_schema, preserve_index=False)
    combined = pa.concat_tables([pq.read_table(path, schema=table_schema), new])
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(combined, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return new.num_rows


def draw_applications(snapshots: Snapshots, scenario: Scenario, n: int, seed: int) -> pd.DataFrame:
    """`n` applications of random known customers, request fields drawn by the training rule (amounts scaled).

    Columns: customer_id, zipcode, loan_amount, loan_term_months, loan_purpose.
    """
    if n < 1:
        raise TrafficError(f"the number of applications must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    chosen = snapshots.customers.iloc[rng.integers(0, len(snapshots.customers), n)]
    request = schema.draw_request_fields(
        rng, chosen["annual_income"].to_numpy(), n, amount_factor=scenario.amount_factor
    )
    return pd.DataFrame(
        {
            "customer_id": chosen["customer_id"].to_numpy(),
            "zipcode": chosen["zipcode"].to_numpy(),
            "loan_amount": request.loan_amount,
            "loan_term_months": request.loan_term_months,
            "loan_purpose": request.loan_purpose,
        }
    )


def default_logit(applications: pd.DataFrame, snapshots: Snapshots, scenario: Scenario) -> np.ndarray:
    """Default log-odds of each application in the scenario's risk regime (no noise); shape (n,)."""
    frame = applications.merge(
        snapshots.customers.drop(columns=["zipcode"]), on="customer_id", how="left", validate="many_to_one"
    ).merge(snapshots.zipcodes[["zipcode", "unemployment_rate"]], on="zipcode", how="left")
    unemployment = frame["unemployment_rate"].fillna(snapshots.zipcodes["unemployment_rate"].median()).to_numpy()
    loan_to_income = np.log(frame["loan_amount"].to_numpy() / frame["annual_income"].to_numpy())
    base = generator.latent_logit(
        credit_utilisation=frame["credit_utilisation"],
        delinquencies_2y=frame["delinquencies_2y"],
        bureau_score=frame["bureau_score"],
        accounts_in_collections=frame["accounts_in_collections"],
        loan_amount=frame["loan_amount"],
        annual_income=frame["annual_income"],
        unemployment_rate=unemployment,
        loan_term_months=frame["loan_term_months"],
        loan_purpose=frame["loan_purpose"],
    )
    return (
        base
        + scenario.logit_shift
        + (scenario.unemployment_coef_factor - 1) * generator.COEF_UNEMPLOYMENT * unemployment
        + (scenario.loan_to_income_coef_factor - 1) * generator.COEF_LOAN_TO_INCOME * loan_to_income
    )


def realise_outcomes(
    answered: pd.DataFrame, snapshots: Snapshots, scenario: Scenario, first_id: int, seed: int
) -> pd.DataFrame:
    """Labelled applications (schema.LOAN_APPLICATIONS_SCHEMA columns) for the answered ones.

    `answered` holds the application columns plus `sent_at` (UTC). A default happens 2-12 months
    after the application, in simulated time.
    """
    rng = np.random.default_rng(seed)
    n = len(answered)
    logit = default_logit(answered, snapshots, scenario) + rng.normal(0.0, generator.LOGIT_NOISE_SD, n)
    defaulted = rng.random(n) < 1 / (1 + np.exp(-logit))
    delay = pd.to_timedelta(rng.uniform(*generator.DEFAULT_DELAY_MONTHS, n) * generator.DAYS_PER_MONTH, unit="D")
    sent_at = pd.to_datetime(answered["sent_at"], utc=True).dt.as_unit("us")
    return pd.DataFrame(
        {
            "application_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "customer_id": answered["customer_id"].astype(np.int64).to_numpy(),
            "zipcode": answered["zipcode"].astype(str).to_numpy(),
            "event_timestamp": sent_at.to_numpy(),
            "loan_amount": answered["loan_amount"].astype(float).to_numpy(),
            "loan_term_months": answered["loan_term_months"].astype(np.int64).to_numpy(),
            "loan_purpose": answered["loan_purpose"].astype(str).to_numpy(),
            "defaulted": defaulted.astype(np.int64),
            "default_timestamp": (sent_at + delay).where(defaulted).to_numpy(),
        }
    )


def next_application_id(data_dir: Path) -> int:
    """One more than the largest application id in the labelled applications."""
    table = pq.read_table(data_dir / schema.LOAN_APPLICATIONS_FILE, columns=["application_id"])
    return int(pa.compute.max(table["application_id"]).as_py() or 0) + 1


def append_applications(data_dir: Path, outcomes: pd.DataFrame) -> int:
    """Append labelled applications (atomic rewrite); returns the rows added."""
    frame = outcomes.copy()
    for column in ("event_timestamp", "default_timestamp"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.as_unit("us")
    return _append(data_dir / schema.LOAN_APPLICATIONS_FILE, frame, schema.LOAN_APPLICATIONS_SCHEMA)


@dataclass
class TrafficResult:
    """What a traffic run sent and got back; `answered` holds the 200s with their send time and answer."""

    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    answered: list[dict[str, Any]] = field(default_factory=list)
    model_versions: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        """Requests answered with 200."""
        return self.statuses.get(200, 0)

    def percentile_ms(self, q: float) -> float:
        """Latency percentile in milliseconds (NaN without requests)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    def answered_frame(self) -> pd.DataFrame:
        """The answered applications with `sent_at`, `default_probability`, `decision`, `model_version`."""
        return pd.DataFrame(self.answered)

    def summary(self) -> str:
        """One line: counts, statuses, latency, approval rate, model versions."""
        frame = self.answered_frame()
        approval = (frame["decision"] == "approve").mean() if len(frame) else math.nan
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(self.statuses.items(), key=str))
        versions = ", ".join(f"v{version}" for version in sorted(self.model_versions))
        return (
            f"{self.sent:,} sent ({statuses}); "
            f"p50 {self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms; "
            f"approval rate {approval:.1%}; answered by model {versions or '-'}"
        )


def due_offset(index: int, rate: float) -> float:
    """Seconds after the start at which request `index` is due at `rate` per second (open loop)."""
    return index / rate


def send_traffic(
    url: str,
    applications: pd.DataFrame,
    rate: float,
    *,
    token: str | None = None,
    workers: int = 8,
    timeout: float = 5.0,
    progress: Callable[[int], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> TrafficResult:
    """POST each application to `{url}/predict`, request i due at start + `due_offset(i, rate)` (open loop).

    A request is never sent before it is due, and a slow answer does not push the later ones back
    (they go out as soon as a worker is free). `transport`, `clock` and `sleep` exist for tests.
    """
    import httpx

    if rate <= 0:
        raise TrafficError(f"rate must be positive, got {rate}")
    records = applications.to_dict("records")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    result = TrafficResult()
    lock = threading.Lock()
    cursor = iter(range(len(records)))
    start = clock() + 0.05

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport) as client:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                delay = start + due_offset(index, rate) - clock()
                if delay > 0:
                    sleep(delay)
                _send_one(client, records[index], result, lock)
                if progress is not None:
                    progress(1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def _send_one(client: Any, application: Mapping[Hashable, Any], result: TrafficResult, lock: threading.Lock) -> None:
    import httpx

    payload = {str(key): (value.item() if hasattr(value, "item") else value) for key, value in application.items()}
    sent_at = datetime.now(UTC)
    began = time.perf_counter()
    try:
        response = client.post("/predict", json=payload)
        status, body = response.status_code, (response.json() if response.status_code == 200 else None)
    except httpx.HTTPError as exc:
        status, body = type(exc).__name__, None
    elapsed_ms = (time.perf_counter() - began) * 1000
    with lock:
        result.sent += 1
        result.statuses[status] += 1
        result.latencies_ms.append(elapsed_ms)
        if body is not None:
            result.model_versions[body["model_version"]] += 1
            result.answered.append(
                {
                    **payload,
                    "sent_at": sent_at,
                    "default_probability": body["default_probability"],
                    "decision": body["decision"],
                    "model_version": body["model_version"],
                }
            )


def applications_needed(rate: float, duration: timedelta) -> int:
    """How many applications a run of `duration` at `rate` per second sends (at least 1)."""
    return max(1, round(rate * duration.total_seconds()))


@dataclass(frozen=True)
class TrafficRun:
    """A finished `run_traffic`: the scenario, the window it ran in, what was sent, what was labelled."""

    scenario: Scenario
    started: datetime
    finished: datetime
    result: TrafficResult
    snapshots_written: dict[str, int]
    labelled: int
    default_rate: float

    def summary(self) -> str:
        """Two lines: the traffic, then the snapshots and outcomes written."""
        written = ", ".join(
            f"{rows:,} {name.removesuffix('.parquet')}" for name, rows in self.snapshots_written.items()
        )
        return (
            f"{self.scenario.name}: {self.result.summary()}\n"
            f"new feature snapshots: {written or 'none'}; outcomes written: {self.labelled:,} applications, "
            f"realised default rate {self.default_rate:.1%}"
        )


def run_traffic(
    settings: Settings,
    scenario_name: str,
    *,
    url: str,
    rate: float,
    duration: timedelta,
    seed: int | None = None,
    token: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrafficRun:
    """Prepare the scenario (snapshots + materialise), send its traffic, write the answered ones' outcomes.

    `progress(stage, done, total)` is called as work advances.
    """
    from mlstack.features.store import BATCH_VIEWS, materialize_feature_view

    scenario = get_scenario(scenario_name)
    seed = int(time.time()) if seed is None else seed
    snapshots, written = prepare_scenario(settings, scenario, datetime.now(UTC), seed)
    if written:
        for done, view in enumerate(BATCH_VIEWS, start=1):
            materialize_feature_view(settings, view, datetime.now(UTC))
            if progress:
                progress("materialise", done, len(BATCH_VIEWS))
    applications = draw_applications(snapshots, scenario, applications_needed(rate, duration), seed + 1)
    started = datetime.now(UTC)
    counter = [0]

    def sent(step: int) -> None:
        counter[0] += step
        if progress:
            progress("send", counter[0], len(applications))

    result = send_traffic(url, applications, rate, token=token, progress=sent)
    finished = datetime.now(UTC)
    labelled, default_rate = book_outcomes(settings, result.answered_frame(), snapshots, scenario, seed + 2)
    return TrafficRun(scenario, started, finished, result, written, labelled, default_rate)


def prepare_scenario(
    settings: Settings, scenario: Scenario, at: datetime, seed: int
) -> tuple[Snapshots, dict[str, int]]:
    """The snapshots applications are drawn from; a drift scenario's shifted ones are written, stamped `at`.

    Returns the snapshots and the rows written per feature table (empty when the scenario moves nothing).
    The online store is not touched: materialise the views to serve the new values.
    """
    snapshots = latest_snapshots(settings.data_dir)
    if not scenario.moves_features:
        return snapshots, {}
    shifted = shift_snapshots(snapshots, scenario, at, seed)
    return shifted, append_snapshots(settings.data_dir, shifted)


def book_outcomes(
    settings: Settings, answered: pd.DataFrame, snapshots: Snapshots, scenario: Scenario, seed: int
) -> tuple[int, float]:
    """Realise the answered applications' outcomes and append them to the labelled applications.

    `answered` holds the application columns and `sent_at`. Returns (rows labelled, realised
    default rate); (0, NaN) when nothing was answered.
    """
    if not len(answered):
        return 0, math.nan
    outcomes = realise_outcomes(answered, snapshots, scenario, next_application_id(settings.data_dir), seed)
    return append_applications(settings.data_dir, outcomes), float(outcomes["defaulted"].mean())
