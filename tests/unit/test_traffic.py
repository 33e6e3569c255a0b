"""Traffic simulator: scenarios, snapshots, request drawing, outcomes, and the open-loop sender (no server)."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlstack.data import generator
from mlstack.data.generator import generate_data
from mlstack.data.schema import (
    CREDIT_HISTORY_FILE,
    CUSTOMER_PROFILE_FILE,
    LOAN_APPLICATIONS_FILE,
    LOAN_APPLICATIONS_SCHEMA,
    LOAN_PURPOSES,
    LOAN_TERMS_MONTHS,
    ZIPCODE_STATS_FILE,
    draw_request_fields,
)
from mlstack.simulation import traffic
from mlstack.simulation.scenarios import SCENARIOS, Scenario, ScenarioName
from mlstack.simulation.traffic import (
    Snapshots,
    TrafficError,
    TrafficResult,
    TrafficRun,
)

END = datetime(2025, 6, 15, tzinfo=UTC)
AT = datetime(2025, 6, 20, 12, tzinfo=UTC)
NORMAL, RECESSION = SCENARIOS["normal"], SCENARIOS["recession"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated data set, shared read-only (tests that write copy it)."""
    directory = tmp_path_factory.mktemp("data")
    generate_data(directory, customers=400, months=6, end=END, seed=3)
    return directory


@pytest.fixture(scope="module")
def snapshots(data_dir: Path) -> Snapshots:
    return traffic.latest_snapshots(data_dir)


@pytest.fixture
def writable_dir(data_dir: Path, tmp_path: Path) -> Path:
    for path in data_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


# --- scenarios ---------------------------------------------------------------------------------


def test_scenarios_define_each_scenario_name_once_under_its_own_name():
    assert tuple(SCENARIOS) == get_args(ScenarioName)
    assert all(scenario.name == name for name, scenario in SCENARIOS.items())


def test_get_scenario_unknown_lists_the_known_ones():
    assert traffic.get_scenario("recession") is RECESSION
    with pytest.raises(TrafficError, match=r"unknown scenario 'boom'.*\['normal', 'recession'\]"):
        traffic.get_scenario("boom")


def test_normal_scenario_is_the_training_regime_and_moves_nothing():
    assert Scenario("normal", NORMAL.description) == NORMAL  # every shift at its neutral default
    assert not NORMAL.moves_features
    assert RECESSION.moves_features


@pytest.mark.parametrize(
    "shift",
    [
        {"hit_zipcode_share": 0.1},
        {"unemployment_shift_other": 0.01},
        {"income_factor_other": 0.9},
        {"utilisation_shift": 0.05},
    ],
)
def test_a_scenario_moves_features_when_any_feature_shift_is_set(shift):
    assert Scenario("x", "x", **shift).moves_features


def test_risk_only_scenario_does_not_move_features():
    assert not Scenario("x", "x", amount_factor=2.0, logit_shift=1.0).moves_features


# --- snapshots ---------------------------------------------------------------------------------


def test_latest_snapshots_one_row_per_customer_and_zipcode_at_its_latest(data_dir, snapshots):
    profile = pd.read_parquet(data_dir / CUSTOMER_PROFILE_FILE)
    zipcodes = pd.read_parquet(data_dir / ZIPCODE_STATS_FILE)
    customers = snapshots.customers
    assert customers["customer_id"].is_unique and set(customers["customer_id"]) == set(profile["customer_id"])
    assert snapshots.zipcodes["zipcode"].is_unique and set(snapshots.zipcodes["zipcode"]) == set(zipcodes["zipcode"])
    latest = profile.groupby("customer_id")["event_timestamp"].max()
    got = customers.set_index("customer_id")["event_timestamp"].loc[latest.index]
    assert (got == latest).all()
    assert {"annual_income", "credit_utilisation", "bureau_score"} <= set(customers.columns)


def test_latest_snapshots_without_data_says_what_to_run(tmp_path):
    with pytest.raises(TrafficError, match="mlstack data generate"):
        traffic.latest_snapshots(tmp_path)


def test_shift_snapshots_is_pure_and_seeded(snapshots):
    before = snapshots.customers.copy()
    once = traffic.shift_snapshots(snapshots, RECESSION, AT, seed=4)
    again = traffic.shift_snapshots(snapshots, RECESSION, AT, seed=4)
    pd.testing.assert_frame_equal(snapshots.customers, before)
    pd.testing.assert_frame_equal(once.customers, again.customers)
    pd.testing.assert_frame_equal(once.zipcodes, again.zipcodes)
    for frame in (once.customers, once.zipcodes):
        assert (frame["event_timestamp"] == pd.Timestamp(AT)).all()
        assert (frame["created_timestamp"] == pd.Timestamp(AT)).all()


def test_recession_snapshots_raise_unemployment_and_utilisation_and_cut_incomes(snapshots):
    shifted = traffic.shift_snapshots(snapshots, RECESSION, AT, seed=4)
    rise = shifted.zipcodes["unemployment_rate"] - snapshots.zipcodes["unemployment_rate"]
    assert (rise >= 0.02 - 1e-9).all() and (rise > 0.05).mean() == pytest.approx(0.4, abs=0.15)
    ratio = shifted.customers["annual_income"] / snapshots.customers["annual_income"]
    assert ratio.between(0.79, 0.94).all()
    assert (ratio < 0.85).any() and (ratio > 0.9).any()  # hit zipcodes and the others
    assert shifted.customers["credit_utilisation"].mean() > snapshots.customers["credit_utilisation"].mean()


def test_neutral_scenario_snapshots_keep_the_values(snapshots):
    shifted = traffic.shift_snapshots(snapshots, NORMAL, AT, seed=1)
    columns = ["annual_income", "credit_utilisation", "monthly_debt_payments"]
    pd.testing.assert_frame_equal(shifted.customers[columns], snapshots.customers[columns])
    pd.testing.assert_series_equal(shifted.zipcodes["median_income"], snapshots.zipcodes["median_income"])


def test_append_snapshots_adds_rows_to_each_feature_table(writable_dir, snapshots):
    shifted = traffic.shift_snapshots(snapshots, RECESSION, AT, seed=2)
    files = (CUSTOMER_PROFILE_FILE, CREDIT_HISTORY_FILE, ZIPCODE_STATS_FILE)
    before = {name: pq.read_metadata(writable_dir / name).num_rows for name in files}
    written = traffic.append_snapshots(writable_dir, shifted)
    assert written == {
        CUSTOMER_PROFILE_FILE: len(shifted.customers),
        CREDIT_HISTORY_FILE: len(shifted.customers),
        ZIPCODE_STATS_FILE: len(shifted.zipcodes),
    }
    for name, rows in written.items():
        assert pq.read_metadata(writable_dir / name).num_rows == before[name] + rows
    assert not list(writable_dir.glob("*.tmp"))
    again = traffic.latest_snapshots(writable_dir)
    assert (again.customers["event_timestamp"] == pd.Timestamp(AT)).all()


# --- requests ----------------------------------------------------------------------------------


def test_draw_applications_are_known_customers_with_valid_request_fields(snapshots):
    applications = traffic.draw_applications(snapshots, NORMAL, 2_000, seed=9)
    assert list(applications.columns) == [
        "customer_id",
        "zipcode",
        "loan_amount",
        "loan_term_months",
        "loan_purpose",
    ]
    known = snapshots.customers.set_index("customer_id")["zipcode"]
    assert applications["customer_id"].isin(known.index).all()
    assert (applications["zipcode"].to_numpy() == known.loc[applications["customer_id"]].to_numpy()).all()
    assert set(applications["loan_term_months"]) <= set(LOAN_TERMS_MONTHS)
    assert set(applications["loan_purpose"]) <= set(LOAN_PURPOSES)
    assert applications["loan_amount"].between(1_000, 100_000).all()


def test_normal_applications_draw_request_fields_by_the_training_rule(snapshots):
    """The shared rule, not a copy: the same rng state gives the generator's fields for these incomes."""
    n, seed = 500, 12
    applications = traffic.draw_applications(snapshots, NORMAL, n, seed)
    rng = np.random.default_rng(seed)
    chosen = snapshots.customers.iloc[rng.integers(0, len(snapshots.customers), n)]
    expected = draw_request_fields(rng, chosen["annual_income"].to_numpy(), n)
    np.testing.assert_array_equal(applications["loan_amount"], expected.loan_amount)
    np.testing.assert_array_equal(applications["loan_term_months"], expected.loan_term_months)
    np.testing.assert_array_equal(applications["loan_purpose"], expected.loan_purpose)


def test_recession_applications_ask_for_larger_loans(snapshots):
    normal = traffic.draw_applications(snapshots, NORMAL, 3_000, seed=5)
    recession = traffic.draw_applications(snapshots, RECESSION, 3_000, seed=5)
    pd.testing.assert_series_equal(normal["customer_id"], recession["customer_id"])
    assert recession["loan_amount"].median() == pytest.approx(1.5 * normal["loan_amount"].median(), rel=0.05)


def test_draw_applications_is_seeded(snapshots):
    first = traffic.draw_applications(snapshots, NORMAL, 50, seed=1)
    pd.testing.assert_frame_equal(first, traffic.draw_applications(snapshots, NORMAL, 50, seed=1))
    assert not first.equals(traffic.draw_applications(snapshots, NORMAL, 50, seed=2))


def test_draw_applications_needs_at_least_one(snapshots):
    with pytest.raises(TrafficError, match="at least 1, got 0"):
        traffic.draw_applications(snapshots, NORMAL, 0, seed=1)


@pytest.mark.parametrize(("rate", "seconds", "expected"), [(10.0, 20, 200), (0.01, 10, 1), (2.5, 3, 8)])
def test_applications_needed_is_rate_times_duration_at_least_one(rate, seconds, expected):
    assert traffic.applications_needed(rate, timedelta(seconds=seconds)) == expected


# --- outcomes ----------------------------------------------------------------------------------


def test_default_logit_of_the_normal_scenario_is_the_training_risk_model(snapshots):
    applications = traffic.draw_applications(snapshots, NORMAL, 300, seed=3)
    frame = applications.merge(snapshots.customers.drop(columns=["zipcode"]), on="customer_id").merge(
        snapshots.zipcodes[["zipcode", "unemployment_rate"]], on="zipcode"
    )
    expected = generator.latent_logit(
        credit_utilisation=frame["credit_utilisation"],
        delinquencies_2y=frame["delinquencies_2y"],
        bureau_score=frame["bureau_score"],
        accounts_in_collections=frame["accounts_in_collections"],
        loan_amount=frame["loan_amount"],
        annual_income=frame["annual_income"],
        unemployment_rate=frame["unemployment_rate"],
        loan_term_months=frame["loan_term_months"],
        loan_purpose=frame["loan_purpose"],
    )
    np.testing.assert_allclose(traffic.default_logit(applications, snapshots, NORMAL), expected)


def test_recession_is_a_riskier_regime(snapshots):
    normal = traffic.default_logit(traffic.draw_applications(snapshots, NORMAL, 3_000, 3), snapshots, NORMAL)
    shifted = traffic.shift_snapshots(snapshots, RECESSION, AT, seed=3)
    applications = traffic.draw_applications(shifted, RECESSION, 3_000, 3)
    recession = traffic.default_logit(applications, shifted, RECESSION)
    assert recession.mean() > normal.mean() + 0.5


def test_recession_weighs_loan_to_income_more(snapshots):
    one_zipcode = snapshots.zipcodes["zipcode"].iloc[0]  # the same unemployment for all: only the loans differ
    applications = traffic.draw_applications(snapshots, NORMAL, 500, seed=3).assign(zipcode=one_zipcode)
    rise = traffic.default_logit(applications, snapshots, RECESSION) - traffic.default_logit(
        applications, snapshots, NORMAL
    )
    income = snapshots.customers.set_index("customer_id").loc[applications["customer_id"], "annual_income"]
    loan_to_income = np.log(applications["loan_amount"].to_numpy() / income.to_numpy())
    assert np.corrcoef(rise, loan_to_income)[0, 1] > 0.999


def test_unknown_zipcode_gets_the_median_unemployment(snapshots):
    applications = traffic.draw_applications(snapshots, NORMAL, 2, seed=3).assign(zipcode="00000")
    assert np.isfinite(traffic.default_logit(applications, snapshots, NORMAL)).all()


def answered(snapshots: Snapshots, n: int, seed: int = 3) -> pd.DataFrame:
    sent_at = pd.date_range(AT, periods=n, freq="s", tz=UTC)
    return traffic.draw_applications(snapshots, NORMAL, n, seed).assign(sent_at=sent_at)


def test_realise_outcomes_are_labelled_applications_in_the_table_schema(snapshots):
    rows = answered(snapshots, 2_000)
    outcomes = traffic.realise_outcomes(rows, snapshots, NORMAL, first_id=101, seed=8)
    assert list(outcomes.columns) == LOAN_APPLICATIONS_SCHEMA.names
    assert list(outcomes["application_id"]) == list(range(101, 2_101))
    assert (outcomes["event_timestamp"] == rows["sent_at"]).all()
    defaulted = outcomes["defaulted"] == 1
    assert outcomes.loc[~defaulted, "default_timestamp"].isna().all()
    delay_days = (outcomes.loc[defaulted, "default_timestamp"] - outcomes.loc[defaulted, "event_timestamp"]).dt.days
    assert delay_days.between(2 * 30, 12 * 31).all()
    assert 0.03 < defaulted.mean() < 0.3


def test_realise_outcomes_is_seeded_and_riskier_in_a_recession(snapshots):
    rows = answered(snapshots, 4_000)
    first = traffic.realise_outcomes(rows, snapshots, NORMAL, 1, seed=8)
    pd.testing.assert_frame_equal(first, traffic.realise_outcomes(rows, snapshots, NORMAL, 1, seed=8))
    recession = traffic.realise_outcomes(rows, snapshots, RECESSION, 1, seed=8)
    assert recession["defaulted"].mean() > first["defaulted"].mean()


def test_append_applications_continues_the_ids(writable_dir, snapshots):
    before = pq.read_table(writable_dir / LOAN_APPLICATIONS_FILE)
    first_id = traffic.next_application_id(writable_dir)
    assert first_id == before["application_id"].to_numpy().max() + 1
    outcomes = traffic.realise_outcomes(answered(snapshots, 25), snapshots, NORMAL, first_id, seed=1)
    assert traffic.append_applications(writable_dir, outcomes) == 25
    after = pq.read_table(writable_dir / LOAN_APPLICATIONS_FILE)
    assert after.schema.equals(LOAN_APPLICATIONS_SCHEMA) and after.num_rows == before.num_rows + 25
    assert traffic.next_application_id(writable_dir) == first_id + 25


# --- the sender --------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when slept on or when the fake service takes time."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def fake_service(clock: FakeClock, latency: float, sent: list[float], status: int = 200) -> httpx.MockTransport:
    """Answers /predict like the service (model version "3"), taking `latency` fake seconds."""

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(clock())
        clock.advance(latency)
        body = json.loads(request.content)
        probability = 0.9 if body["loan_amount"] > 50_000 else 0.1
        answer = {"default_probability": probability, "decision": "decline" if probability > 0.5 else "approve"}
        return httpx.Response(status, json={**answer, "model_version": "3"})

    return httpx.MockTransport(handle)


def some_applications(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "zipcode": ["12345"] * n,
            "loan_amount": np.where(np.arange(n) % 4 == 0, 60_000.0, 5_000.0),
            "loan_term_months": [36] * n,
            "loan_purpose": ["car"] * n,
        }
    )


def test_due_offset_is_index_over_rate():
    assert [traffic.due_offset(i, 4.0) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_sender_sends_each_request_when_it_is_due():
    clock, sent = FakeClock(), []
    start = clock() + 0.05
    result = traffic.send_traffic(
        "http://service",
        some_applications(8),
        rate=4.0,
        workers=1,
        transport=fake_service(clock, 0.0, sent),
        clock=clock,
        sleep=clock.sleep,
    )
    assert sent == pytest.approx([start + i / 4.0 for i in range(8)])
    assert result.sent == result.ok == 8


def test_sender_behind_schedule_sends_back_to_back_without_sleeping():
    """Behind schedule, requests go out back to back (no sleeping) rather than spaced after each answer."""
    clock, sent = FakeClock(), []
    start = clock() + 0.05
    traffic.send_traffic(
        "http://service",
        some_applications(6),
        rate=10.0,
        workers=1,
        transport=fake_service(clock, 0.25, sent),
        clock=clock,
        sleep=clock.sleep,
    )
    assert sent == pytest.approx([start + 0.25 * i for i in range(6)])


def test_sender_records_statuses_answers_and_model_versions():
    clock, sent = FakeClock(), []
    progress = Counter()
    result = traffic.send_traffic(
        "http://service",
        some_applications(12),
        rate=100.0,
        workers=3,
        transport=fake_service(clock, 0.0, sent),
        clock=clock,
        sleep=clock.sleep,
        progress=lambda step: progress.update(done=step),
    )
    assert result.sent == 12 and result.statuses == Counter({200: 12}) and progress["done"] == 12
    assert result.model_versions == Counter({"3": 12}) and len(result.latencies_ms) == 12
    frame = result.answered_frame()
    assert sorted(frame["customer_id"]) == list(range(1, 13))
    assert {"sent_at", "default_probability", "decision", "model_version"} <= set(frame.columns)
    assert (frame["decision"] == "decline").sum() == 3
    assert "12 sent (200: 12)" in result.summary() and "approval rate 75.0%" in result.summary()


def test_sender_counts_errors_without_answers():
    clock, sent = FakeClock(), []
    result = traffic.send_traffic(
        "http://service",
        some_applications(4),
        rate=100.0,
        workers=2,
        transport=fake_service(clock, 0.0, sent, status=503),
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.statuses == Counter({503: 4}) and result.ok == 0 and result.answered == []


def test_sender_records_a_connection_failure_by_exception_name():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    clock = FakeClock()
    result = traffic.send_traffic(
        "http://service",
        some_applications(2),
        rate=100.0,
        transport=httpx.MockTransport(refuse),
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.statuses == Counter({"ConnectError": 2})


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_sender_refuses_a_non_positive_rate(rate):
    with pytest.raises(TrafficError, match="rate must be positive"):
        traffic.send_traffic("http://service", some_applications(1), rate)


def test_empty_result_summary_has_no_numbers():
    result = TrafficResult()
    assert result.ok == 0 and math.isnan(result.percentile_ms(50))
    assert "0 sent" in result.summary() and "answered by model -" in result.summary()


def test_traffic_run_summary_names_the_scenario_and_what_was_written():
    result = TrafficResult(sent=2, statuses=Counter({200: 2}), latencies_ms=[1.0, 3.0])
    run = TrafficRun(RECESSION, AT, AT, result, {ZIPCODE_STATS_FILE: 40}, labelled=2, default_rate=0.5)
    first, second = run.summary().splitlines()
    assert first.startswith("recession: 2 sent")
    assert second == (
        "new feature snapshots: 40 zipcode_stats; outcomes written: 2 applications, realised default rate 50.0%"
    )
    quiet = TrafficRun(NORMAL, AT, AT, result, {}, labelled=0, default_rate=math.nan)
    assert "new feature snapshots: none" in quiet.summary()
