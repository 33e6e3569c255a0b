"""Shadow mode: the challenger scored off the response path, the append-only log, the evidence on matured outcomes."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta

import lightgbm
import numpy as np
import pandas as pd
import pytest

from mlstack.data.generator import OUTCOME_WINDOW
from mlstack.monitoring import shadow
from mlstack.monitoring.shadow import AbPlan, compare_approval_rates, evaluate, join_outcomes
from mlstack.monitoring.shadow_log import ShadowLog, ShadowRecord, read_shadow_log
from mlstack.serving import runtime as serving_runtime
from mlstack.serving.runtime import ServedModel, ServingRuntime, load_challenger
from mlstack.serving.scoring import Scorer, parse_online_response
from mlstack.serving.shadow import ShadowScorer, assign_arm
from mlstack.settings import Settings
from mlstack.training.calibration import IDENTITY
from tests.support.shadow_evidence import APPLIED, AS_OF, FLOORS, PAIR, RULE, simulated
from tests.unit.test_scoring import APPLICATION, STORED, TTLS, FakeFeatureStore, online_response
from tests.unit.test_traffic_profiles import wait_for

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def small_booster(seed: int) -> lightgbm.Booster:
    """A small real booster on the model's feature contract (another seed: another model)."""
    from tests.unit.test_scoring import FEATURES, categorical_indices

    rng = np.random.default_rng(seed)
    rows = 400
    matrix = rng.normal(size=(rows, len(FEATURES)))
    for index in categorical_indices():
        matrix[:, index] = rng.integers(0, 3, rows)
    labels = (matrix[:, FEATURES.index("credit_utilisation")] + rng.normal(0, 0.5, rows) > 0.8).astype(float)
    dataset = lightgbm.Dataset(
        matrix, labels, feature_name=list(FEATURES), categorical_feature=categorical_indices(), free_raw_data=False
    )
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5, "seed": seed}
    return lightgbm.train(params, dataset, num_boost_round=10)


@pytest.fixture(scope="module")
def champion() -> Scorer:
    return Scorer(small_booster(0), model_name="credit-risk", model_version="1", threshold=0.2, feature_ttls=TTLS)


@pytest.fixture(scope="module")
def challenger() -> Scorer:
    return Scorer(small_booster(1), model_name="credit-risk", model_version="2", threshold=0.2, feature_ttls=TTLS)


def applications(n: int) -> list[dict]:
    return [{**APPLICATION, "customer_id": 100 + i, "loan_amount": 5_000.0 + 250 * i} for i in range(n)]


# --- the log -----------------------------------------------------------------------------------


def record(**overrides: object) -> ShadowRecord:
    fields: dict = {
        "request_id": "r1",
        "scored_at": APPLIED,
        "customer_id": 7,
        "zipcode": "94107",
        "loan_amount": 12_000.0,
        "loan_term_months": 36,
        "loan_purpose": "car",
        "feature_service": "credit_risk_v1",
        "model_name": "credit-risk",
        "threshold": 0.2,
        "champion_version": "1",
        "champion_probability": 0.1,
        "champion_decision": "approve",
        "challenger_version": "2",
        "challenger_probability": 0.3,
        "challenger_decision": "decline",
    }
    return ShadowRecord(**(fields | overrides))


def test_shadow_log_reads_back_every_record_of_every_segment(tmp_path) -> None:
    for writer in range(2):  # two workers: two segments
        log = ShadowLog(tmp_path)
        log.append([record(request_id=f"w{writer}-{i}", customer_id=i) for i in range(3)])
        log.close()
    contents = read_shadow_log(tmp_path)
    assert (len(contents.records), contents.segments, contents.torn_lines) == (6, 2, 0)
    assert sorted(contents.records["request_id"]) == sorted(f"w{w}-{i}" for w in range(2) for i in range(3))
    assert str(contents.records["scored_at"].dt.tz) == "UTC"
    assert contents.records["challenger_probability"].tolist() == [0.3] * 6


def test_shadow_log_skips_a_torn_last_line_and_refuses_a_corrupt_one(tmp_path) -> None:
    log = ShadowLog(tmp_path)
    log.append([record(), record(request_id="r2")])
    log.close()
    assert log.path is not None
    with log.path.open("a") as handle:
        handle.write('{"request_id": "r3", "scor')  # a writer killed mid-line
    contents = read_shadow_log(tmp_path)
    assert (len(contents.records), contents.torn_lines) == (2, 1)
    log.path.write_text("not json\n" + record().to_json() + "\n")
    with pytest.raises(ValueError, match="corrupt at line 1"):
        read_shadow_log(tmp_path)


def test_shadow_log_of_a_missing_directory_is_empty(tmp_path) -> None:
    contents = read_shadow_log(tmp_path / "nothing")
    assert (len(contents.records), contents.segments) == (0, 0)


# --- the shadow scorer -------------------------------------------------------------------------


def test_runtime_records_both_scores_for_every_scored_application(tmp_path, champion, challenger) -> None:
    apps = applications(5)
    store = FakeFeatureStore(online_response([(app, STORED, STORED) for app in apps]))
    scorer = ShadowScorer(challenger, ShadowLog(tmp_path), "credit_risk_v1")
    runtime = ServingRuntime(champion, store, None, feature_service="credit_risk_v1", shadow=scorer)
    served = runtime.predict(apps)
    assert scorer.pending_rows == len(apps)  # queued, not scored on the request path (no thread started)
    runtime.close()
    records = read_shadow_log(tmp_path).records
    values, stamps = parse_online_response(store.columns)
    expected = challenger.score_batch(apps, values, stamps, records["scored_at"].iloc[0].to_pydatetime())
    assert len(records) == len(apps) == scorer.recorded_rows
    assert records["customer_id"].tolist() == [app["customer_id"] for app in apps]
    assert records["champion_probability"].tolist() == [p.default_probability for p in served]
    assert records["challenger_probability"].tolist() == [p.default_probability for p in expected]
    assert records["champion_probability"].tolist() != records["challenger_probability"].tolist()
    assert set(records["champion_version"]) == {"1"} and set(records["challenger_version"]) == {"2"}
    assert set(records["feature_service"]) == {"credit_risk_v1"} and set(records["decided_by"]) == {"champion"}
    assert records["request_id"].is_unique


def test_shadow_scorer_thread_logs_batches_and_stop_flushes_the_rest(tmp_path, champion, challenger) -> None:
    apps = applications(3)
    store = FakeFeatureStore(online_response([(app, STORED, None) for app in apps]))
    scorer = ShadowScorer(challenger, ShadowLog(tmp_path), "credit_risk_v1", flush_seconds=0.01)
    scorer.start()
    runtime = ServingRuntime(champion, store, None, feature_service="credit_risk_v1", shadow=scorer)
    for _ in range(20):
        runtime.predict(apps)
    assert scorer.stop() is True
    assert (scorer.recorded_rows, scorer.failed_rows, scorer.dropped_rows, scorer.pending_rows) == (60, 0, 0, 0)
    assert len(read_shadow_log(tmp_path).records) == 60


def test_shadow_scorer_drops_beyond_its_queue_and_counts_failures(tmp_path, champion, challenger) -> None:
    apps = applications(4)
    store = FakeFeatureStore(online_response([(app, STORED, STORED) for app in apps]))
    scorer = ShadowScorer(challenger, ShadowLog(tmp_path), "credit_risk_v1", max_pending_rows=6)
    runtime = ServingRuntime(champion, store, None, feature_service="credit_risk_v1", shadow=scorer)
    runtime.predict(apps)
    runtime.predict(apps)  # 8 > 6 queued: this batch is dropped, not queued
    scorer.drain()
    values, stamps = parse_online_response(store.columns)
    scored = champion.evaluate(apps, values, stamps, NOW)
    served = [row.prediction for row in scored.rows]
    scorer.submit(apps, scored.matrix[:1], NOW, served)  # model inputs of one row for four
    scorer.stop()
    assert (scorer.recorded_rows, scorer.dropped_rows, scorer.failed_rows) == (4, 4, 4)


def without_request_ids(directory) -> list[dict]:
    return read_shadow_log(directory).records.drop(columns=["request_id"]).to_dict("records")


def test_process_shadow_scorer_logs_what_the_thread_logs_and_ignores_sigterm(tmp_path, champion, challenger) -> None:
    apps = applications(6)
    store = FakeFeatureStore(
        online_response([(app, STORED, STORED if app["customer_id"] % 2 else None) for app in apps])
    )
    values, stamps = parse_online_response(store.columns)
    later = NOW + timedelta(days=50)  # the credit features (20 days old, TTL 45 days) are stale by then
    scored = champion.evaluate(apps, values, stamps, later)
    assert any(row.prediction.stale_features for row in scored.rows)
    served = [row.prediction for row in scored.rows]
    scorers = {}
    for mode, process in (("thread", False), ("process", True)):
        scorer = ShadowScorer(
            challenger, ShadowLog(tmp_path / mode), "credit_risk_v1", flush_seconds=0.02, process=process
        )
        scorer.start()
        scorer.submit(apps[:4], scored.matrix[:4], later, served[:4])
        scorers[mode] = scorer
    process_scorer = scorers["process"]
    wait_for(lambda: process_scorer.recorded_rows == 4)
    os.kill(process_scorer.process_id, signal.SIGTERM)  # what a service's process group gets on shutdown
    time.sleep(0.2)
    for scorer in scorers.values():
        scorer.submit(apps[4:], scored.matrix[4:], later, served[4:])
        assert scorer.stop(timeout=60)
        assert (scorer.recorded_rows, scorer.failed_rows, scorer.dropped_rows) == (6, 0, 0)
    assert without_request_ids(tmp_path / "process") == without_request_ids(tmp_path / "thread")
    expected = challenger.score_batch(apps, values, stamps, later)
    records = read_shadow_log(tmp_path / "process").records
    assert records["challenger_probability"].tolist() == [p.default_probability for p in expected]
    assert records["champion_probability"].tolist() == [p.default_probability for p in served]
    assert records["request_id"].is_unique and read_shadow_log(tmp_path / "process").torn_lines == 0


def test_process_shadow_scorer_counts_applications_lost_with_a_dead_child_and_carries_on(
    tmp_path, champion, challenger
) -> None:
    apps = applications(3)
    store = FakeFeatureStore(online_response([(app, STORED, STORED) for app in apps]))
    scorer = ShadowScorer(challenger, ShadowLog(tmp_path), "credit_risk_v1", process=True)
    runtime = ServingRuntime(champion, store, None, feature_service="credit_risk_v1", shadow=scorer)
    runtime.predict(apps)
    scorer.drain()  # scored and logged by the child
    os.kill(scorer.process_id, signal.SIGKILL)
    wait_for(lambda: scorer.process_id is None)
    runtime.predict(apps)
    scorer.drain()  # finds the child dead: these 3 are lost
    runtime.predict(apps)
    assert scorer.stop(timeout=60)  # a new child scores and logs the rest
    assert (scorer.recorded_rows, scorer.failed_rows) == (6, 3)
    assert len(read_shadow_log(tmp_path).records) == 6


def test_runtime_refuses_a_challenger_read_with_other_feature_ttls(tmp_path, champion) -> None:
    other = Scorer(
        small_booster(1),
        model_name="credit-risk",
        model_version="2",
        threshold=0.2,
        feature_ttls={name: ttl * 2 for name, ttl in TTLS.items()},
    )
    scorer = ShadowScorer(other, ShadowLog(tmp_path), "credit_risk_v1")
    with pytest.raises(ValueError, match="same feature TTLs"):
        ServingRuntime(champion, FakeFeatureStore(), None, feature_service="credit_risk_v1", shadow=scorer)


@pytest.mark.parametrize(("alias", "reason"), [(None, "no @challenger"), ("1", "is the champion")])
def test_load_challenger_is_a_no_op_with_a_log_line(monkeypatch, caplog, alias, reason) -> None:
    monkeypatch.setattr(serving_runtime.registry, "alias_version", lambda settings, name: alias)
    champion_model = ServedModel(small_booster(0), IDENTITY, "credit-risk", "1")
    with caplog.at_level("INFO", logger=serving_runtime.__name__):
        assert load_challenger(Settings(), champion_model) is None
    assert reason in caplog.text


# --- the evidence ------------------------------------------------------------------------------


def run(records: pd.DataFrame, book: pd.DataFrame, **overrides: object) -> shadow.ShadowEvidence:
    arguments: dict = {"as_of": AS_OF, "rule": RULE, "floors": FLOORS, "threshold": 0.5} | overrides
    return evaluate(records, book, PAIR, **arguments)


def test_evaluate_shadow_promotes_a_challenger_known_to_be_better() -> None:
    records, book = simulated(4000, 0, "better")
    evidence = run(records, book)
    assert evidence.verdict == "promote", evidence.summary()
    assert evidence.records == evidence.booked == evidence.matured == 4000
    assert evidence.compared == 4000 - evidence.declined > 0
    assert evidence.decision is not None and evidence.decision.comparison is not None
    assert evidence.decision.comparison.log_loss.upper < 0
    assert evidence.decision.champion_version == "1"


def test_evaluate_shadow_rejects_an_equal_challenger_as_not_better() -> None:
    records, book = simulated(4000, 1, "equal")
    evidence = run(records, book)
    assert evidence.verdict == "not_better", evidence.summary()
    assert not evidence.promote


def test_evaluate_shadow_counts_only_matured_outcomes() -> None:
    records, book = simulated(4000, 0, "better")
    halfway = pd.Timestamp(APPLIED) + pd.Timedelta(OUTCOME_WINDOW) + pd.Timedelta(days=10)
    evidence = run(records, book, as_of=halfway.to_pydatetime())
    expected = int((book["event_timestamp"] + pd.Timedelta(OUTCOME_WINDOW) <= halfway).sum())
    assert 0 < evidence.matured == expected < 4000
    early = run(records, book, as_of=APPLIED + timedelta(days=200))  # nothing matured: defaults so far mean nothing
    assert (early.matured, early.compared, early.decision) == (0, 0, None)
    assert early.verdict == "insufficient_evidence"
    assert "champion v1 is kept" in early.reasons[0]


def test_evaluate_shadow_leaves_out_declined_applications_unless_simulated() -> None:
    records, book = simulated(4000, 0, "better")
    approved_only = run(records, book)
    everything = run(records, book, include_declined=True)
    assert approved_only.declined == everything.declined > 0
    assert approved_only.compared == 4000 - approved_only.declined
    assert everything.compared == 4000
    assert "reject inference" in approved_only.population_note
    assert "simulation" in everything.population_note
    assert "reject inference" in shadow.shadow_markdown(approved_only)


def test_join_outcomes_needs_the_same_fields_within_the_tolerance() -> None:
    records, book = simulated(10, 0, "better")
    book.loc[0, "event_timestamp"] -= pd.Timedelta(minutes=10)  # too far from its score
    book.loc[1, "loan_amount"] = 10_010.0  # another application
    joined = join_outcomes(records, book)
    assert sorted(joined["customer_id"]) == list(range(3, 11))  # customers 1 and 2: no booking found
    assert joined["scored_at"].sub(joined["event_timestamp"]).abs().max() == pd.Timedelta(seconds=2)


def test_evaluate_shadow_leaves_out_a_booking_two_scores_claim() -> None:
    records, book = simulated(10, 0, "better")
    twice = pd.concat([records, records.iloc[[4]].assign(scored_at=records.loc[4, "scored_at"] + pd.Timedelta(1, "s"))])
    evidence = run(twice, book)
    assert (evidence.records, evidence.booked, evidence.ambiguous) == (11, 11, 2)
    assert evidence.matured == 9


def test_evaluate_shadow_only_uses_the_named_pair() -> None:
    records, book = simulated(4000, 0, "better")
    other = records.assign(challenger_version="3")
    evidence = run(pd.concat([records.iloc[:100], other]), book)
    assert evidence.records == 100


# --- A/B mode ----------------------------------------------------------------------------------


def test_assign_arm_is_sticky_and_gives_the_challenger_its_share() -> None:
    arms = [assign_arm(customer, 0.3, "ab-v2") for customer in range(1, 20_001)]
    assert abs(arms.count("challenger") / len(arms) - 0.3) < 0.015
    assert arms == [assign_arm(customer, 0.3, "ab-v2") for customer in range(1, 20_001)]  # same customer, same arm
    assert arms != [assign_arm(customer, 0.3, "ab-v3") for customer in range(1, 20_001)]  # a new experiment reshuffles
    assert {assign_arm(customer, 0.0, "ab-v2") for customer in range(1, 1001)} == {"champion"}


def test_ab_mode_lets_the_challenger_decide_for_its_arm_and_logs_who_decided(tmp_path, champion, challenger) -> None:
    apps = applications(40)
    store = FakeFeatureStore(online_response([(app, STORED, STORED) for app in apps]))
    scorer = ShadowScorer(challenger, ShadowLog(tmp_path), "credit_risk_v1", ab_share=0.5)
    runtime = ServingRuntime(champion, store, None, feature_service="credit_risk_v1", shadow=scorer)
    answers = runtime.predict(apps)
    runtime.close()
    records = read_shadow_log(tmp_path).records
    arms = [assign_arm(app["customer_id"], 0.5, "ab-v2") for app in apps]
    assert 0 < arms.count("challenger") < len(apps)
    assert [answer.decided_by for answer in answers] == arms == records["decided_by"].tolist()
    assert [answer.model_version for answer in answers] == ["2" if arm == "challenger" else "1" for arm in arms]
    given = np.where(
        records["decided_by"] == "challenger", records["challenger_probability"], records["champion_probability"]
    )
    assert [answer.default_probability for answer in answers] == given.tolist()
    assert set(records["ab_share"]) == {0.5}


def test_ab_sample_size_is_cohens_h_at_the_plan() -> None:
    from statistics import NormalDist

    plan = AbPlan(baseline_approval_rate=0.75, min_detectable_difference=0.05, alpha=0.05)
    h = abs(2 * np.arcsin(np.sqrt(0.70)) - 2 * np.arcsin(np.sqrt(0.75)))  # 0.70 is nearer 0.5 than 0.80: harder
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    equal = int(np.ceil(2 * (z / h) ** 2))  # per arm; Cohen's table: h = 0.2 needs 392 (2 * (2.8016 / 0.2) ** 2)
    assert plan.sample_sizes(0.5) == (equal, equal)
    champion_rows, challenger_rows = plan.sample_sizes(0.2)  # a smaller challenger arm needs more rows in all
    assert challenger_rows == int(np.ceil(champion_rows / 4)) and champion_rows + challenger_rows > 2 * equal
    with pytest.raises(ValueError, match="share"):
        plan.sample_sizes(0.0)


def ab_records(champion_rate: float, challenger_rate: float, per_arm: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = 2 * per_arm
    decided_by = np.array(["champion", "challenger"] * per_arm)
    approve_champion = rng.random(rows) < champion_rate
    approve_challenger = rng.random(rows) < challenger_rate
    return pd.DataFrame(
        {
            "scored_at": pd.Timestamp(APPLIED) + pd.to_timedelta(np.arange(rows), unit="s"),
            "decided_by": decided_by,
            "ab_share": 0.5,
            "champion_decision": np.where(approve_champion, "approve", "decline"),
            "challenger_decision": np.where(approve_challenger, "approve", "decline"),
        }
    )


def test_approval_rates_are_tested_once_the_pre_registered_size_is_reached() -> None:
    plan = AbPlan(baseline_approval_rate=0.75, min_detectable_difference=0.05, alpha=0.05)
    required, _ = plan.sample_sizes(0.5)
    different = compare_approval_rates(ab_records(0.75, 0.65, required + 500), plan)
    assert different is not None and different.reached and different.significant
    assert different.z is not None and different.z < 0  # challenger minus champion: it approves less
    same = compare_approval_rates(ab_records(0.75, 0.75, required + 500, seed=3), plan)
    assert same is not None and same.reached and not same.significant
    early = compare_approval_rates(ab_records(0.75, 0.55, required // 2), plan)
    assert early is not None and not early.reached and early.p_value is None  # no peeking, however large it looks
    assert "not tested" in early.summary()
    assert compare_approval_rates(ab_records(0.75, 0.75, 10).assign(ab_share=0.0), plan) is None


def test_evaluate_shadow_of_an_empty_log_is_insufficient_evidence(tmp_path) -> None:
    _, book = simulated(100, 0, "better")
    evidence = run(read_shadow_log(tmp_path).records, book)
    assert (evidence.records, evidence.compared, evidence.verdict) == (0, 0, "insufficient_evidence")
    assert evidence.first_scored_at is None and "0 logged" in evidence.summary()
