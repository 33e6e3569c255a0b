"""Scoring core: request models, Feast response parsing, freshness, the scorer's policy, error mapping."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import lightgbm
import numpy as np
import pydantic
import pytest
import redis

from mlstack.data.schema import LOAN_PURPOSES, LOAN_TERMS_MONTHS
from mlstack.features.online_store import OnlineStoreError
from mlstack.serving import scoring
from mlstack.serving.scoring import (
    MAX_BATCH,
    BatchRequest,
    FeatureStoreUnavailable,
    LoanApplication,
    ModelContractError,
    Scorer,
    classify_error,
    feature_freshness,
    fetch_online_features,
    load_feature_ttls,
    parse_online_response,
)
from mlstack.training.model_input import FEATURES, categorical_indices, encode_row

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CUSTOMER = ("age", "annual_income", "employment_length_years", "home_ownership")
CREDIT = (
    "credit_utilisation",
    "open_accounts",
    "delinquencies_2y",
    "bureau_score",
    "monthly_debt_payments",
    "accounts_in_collections",
)
ZIPCODE = ("median_income", "unemployment_rate", "population", "regional_default_rate")
TTLS = {
    **dict.fromkeys(CUSTOMER, timedelta(days=90)),
    **dict.fromkeys(CREDIT, timedelta(days=45)),
    **dict.fromkeys(ZIPCODE, timedelta(days=62)),
}
APPLICATION = {
    "customer_id": 7,
    "zipcode": "94107",
    "loan_amount": 12_000.0,
    "loan_term_months": 36,
    "loan_purpose": "car",
}
STORED = {
    "age": 41,
    "annual_income": 64_000.0,
    "employment_length_years": 6.5,
    "home_ownership": "MORTGAGE",
    "credit_utilisation": 0.92,
    "open_accounts": 9,
    "delinquencies_2y": 2,
    "bureau_score": 590,
    "monthly_debt_payments": 1_450.0,
    "accounts_in_collections": 1,
    "median_income": 71_000.0,
    "unemployment_rate": 0.06,
    "population": 31_000,
    "regional_default_rate": 0.09,
}


def ratios(values: dict[str, Any], application: dict[str, Any]) -> dict[str, float]:
    """What the loan_ratios ODFV computes (feature_store/on_demand_features.py)."""
    income = values["annual_income"]
    if income is None or not income > 0:
        return {"loan_to_income": math.nan, "payment_to_income": math.nan}
    debt = values["monthly_debt_payments"] if values["monthly_debt_payments"] is not None else math.nan
    monthly = application["loan_amount"] / application["loan_term_months"] + debt
    return {"loan_to_income": application["loan_amount"] / income, "payment_to_income": monthly / (income / 12)}


def online_response(rows: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]]) -> dict:
    """The exact shape of ``OnlineResponse.to_dict(include_event_timestamps=True)`` (Feast 0.67) for the service.

    Each row: (application, customer+credit values or None if unknown, zipcode values or None if unknown).
    Every name gets a ``__ts`` column of epoch seconds; Feast writes 0 for not-found and computed values.
    """
    customer_ts = int((NOW - timedelta(days=10)).timestamp())
    credit_ts = int((NOW - timedelta(days=20)).timestamp())
    zipcode_ts = int((NOW - timedelta(days=30)).timestamp())
    columns: dict[str, list[Any]] = {}

    def put(name: str, values: list[Any], stamps: list[int]) -> None:
        columns[name] = values
        columns[name + "__ts"] = stamps

    put("customer_id", [app["customer_id"] for app, _, _ in rows], [0] * len(rows))
    put("zipcode", [app["zipcode"] for app, _, _ in rows], [0] * len(rows))
    for names, index, ts in ((CUSTOMER, 1, customer_ts), (CREDIT, 1, credit_ts), (ZIPCODE, 2, zipcode_ts)):
        for name in names:
            put(
                name,
                [row[index][name] if row[index] else None for row in rows],
                [ts if row[index] else 0 for row in rows],
            )
    for name in ("loan_to_income", "payment_to_income"):
        computed = [ratios(row[1] or dict.fromkeys(STORED), row[0])[name] for row in rows]
        put(name, computed, [0] * len(rows))
    return columns


@pytest.fixture(scope="module")
def booster() -> lightgbm.Booster:
    """A small real booster on the model's feature contract (risk rises with utilisation)."""
    rng = np.random.default_rng(0)
    rows = 400
    matrix = rng.normal(size=(rows, len(FEATURES)))
    for index in categorical_indices():
        matrix[:, index] = rng.integers(0, 3, rows)
    utilisation = matrix[:, FEATURES.index("credit_utilisation")]
    labels = (utilisation + rng.normal(0, 0.5, rows) > 0.8).astype(float)
    dataset = lightgbm.Dataset(
        matrix, labels, feature_name=list(FEATURES), categorical_feature=categorical_indices(), free_raw_data=False
    )
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5, "seed": 0}
    return lightgbm.train(params, dataset, num_boost_round=10)


@pytest.fixture
def scorer(booster: lightgbm.Booster) -> Scorer:
    return Scorer(booster, model_name="credit-risk", model_version="3", threshold=0.2, feature_ttls=TTLS)


def direct_probability(booster: lightgbm.Booster, row: dict[str, Any]) -> float:
    return float(booster.predict(encode_row(row))[0])


# --- request models ----------------------------------------------------------------------------


def test_openapi_schema_lists_purposes_terms_and_an_example() -> None:
    schema = LoanApplication.model_json_schema()
    assert schema["properties"]["loan_purpose"]["enum"] == list(LOAN_PURPOSES)
    assert schema["properties"]["loan_term_months"]["enum"] == list(LOAN_TERMS_MONTHS)
    assert schema["additionalProperties"] is False
    LoanApplication.model_validate(schema["example"])


def test_loan_application_accepts_a_valid_request() -> None:
    application = LoanApplication.model_validate_json(
        '{"customer_id": 7, "zipcode": "01234", "loan_amount": 500, "loan_term_months": 60, "loan_purpose": "other"}'
    )
    assert application.zipcode == "01234"
    assert application.loan_amount == 500.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", 0),
        ("customer_id", -3),
        ("customer_id", 2**63),  # past Feast's INT64 entity key: was a 500 (ValueError encoding the key)
        ("zipcode", "1234"),
        ("zipcode", "123456"),
        ("zipcode", "12a45"),
        ("zipcode", 94107),
        ("zipcode", "\uff19\uff14\uff11\uff10\uff17"),  # full-width digits are not ASCII digits
        ("loan_amount", 499.99),
        ("loan_amount", 100_000.01),
        ("loan_amount", float("nan")),
        ("loan_amount", float("inf")),
        ("loan_term_months", 48),
        ("loan_purpose", "boat"),
        # strict: no coercion of another JSON type (issue 15: `true` was scored as customer 1)
        ("customer_id", True),
        ("customer_id", "1"),
        ("customer_id", 1.0),
        ("loan_amount", "12000"),
        ("loan_amount", True),
        ("loan_term_months", "36"),
        ("loan_term_months", 36.0),
        ("loan_term_months", True),
    ],
)
def test_loan_application_rejects_invalid_field_naming_it(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        LoanApplication.model_validate({**APPLICATION, field: value})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("customer_id", True), ("customer_id", "1"), ("loan_amount", "12000"), ("loan_term_months", 36.0)],
)
def test_loan_application_json_is_strict_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        LoanApplication.model_validate_json(json.dumps({**APPLICATION, field: value}))
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_batch_request_is_strict_naming_the_application_and_field() -> None:
    body = json.dumps({"applications": [APPLICATION, {**APPLICATION, "customer_id": True}]})
    with pytest.raises(pydantic.ValidationError) as caught:
        BatchRequest.model_validate_json(body)
    assert [error["loc"] for error in caught.value.errors()] == [("applications", 1, "customer_id")]


def test_loan_application_takes_an_integer_amount() -> None:
    """JSON has one number type: 12000 is as good an amount as 12000.0."""
    application = LoanApplication.model_validate_json(json.dumps({**APPLICATION, "loan_amount": 12000}))
    assert application.loan_amount == 12000.0 and isinstance(application.loan_amount, float)


def test_loan_application_accepts_the_largest_int64_customer_id() -> None:
    assert LoanApplication.model_validate({**APPLICATION, "customer_id": 2**63 - 1}).customer_id == 2**63 - 1


def test_loan_application_rejects_nan_in_json() -> None:
    body = '{"customer_id": 7, "zipcode": "94107", "loan_amount": NaN, "loan_term_months": 36, "loan_purpose": "car"}'
    with pytest.raises(pydantic.ValidationError):
        LoanApplication.model_validate_json(body)


def test_loan_application_rejects_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        LoanApplication.model_validate({**APPLICATION, "income": 1})
    assert caught.value.errors()[0]["loc"] == ("income",)


@pytest.mark.parametrize("size", [0, MAX_BATCH + 1])
def test_batch_request_rejects_empty_and_oversized_batches(size: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        BatchRequest.model_validate({"applications": [APPLICATION] * size})


def test_batch_request_accepts_max_batch() -> None:
    assert len(BatchRequest.model_validate({"applications": [APPLICATION] * MAX_BATCH}).applications) == MAX_BATCH


# --- Feast response ----------------------------------------------------------------------------


def test_parse_online_response_splits_values_and_timestamps() -> None:
    unknown = {**APPLICATION, "customer_id": 999}
    values, stamps = parse_online_response(online_response([(APPLICATION, STORED, STORED), (unknown, None, STORED)]))
    assert len(values) == len(stamps) == 2
    assert not any(name.endswith("__ts") for name in values[0])
    assert values[0]["bureau_score"] == 590
    assert values[0]["loan_to_income"] == pytest.approx(12_000 / 64_000)  # on-demand features come from Feast
    assert stamps[0]["age"] == NOW - timedelta(days=10)
    assert stamps[0]["bureau_score"] == NOW - timedelta(days=20)
    assert stamps[0]["median_income"] == NOW - timedelta(days=30)
    assert stamps[0]["loan_to_income"] is None  # computed, not stored: Feast stamps 0
    assert stamps[0]["customer_id"] is None
    assert values[1]["age"] is None
    assert stamps[1]["age"] is None
    assert math.isnan(values[1]["loan_to_income"])
    assert stamps[1]["median_income"] == NOW - timedelta(days=30)


def test_parse_online_response_without_timestamps_gives_empty_stamps() -> None:
    values, stamps = parse_online_response({"age": [30, None]})
    assert values == [{"age": 30}, {"age": None}]
    assert stamps == [{}, {}]


class FakeResponse:
    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, list[Any]]:
        if include_event_timestamps:
            return self.columns
        return {name: value for name, value in self.columns.items() if not name.endswith("__ts")}


class FakeFeatureStore:
    """The two FeatureStore methods the online read uses; answers with a canned response or raises."""

    def __init__(self, columns: dict[str, list[Any]] | None = None, error: Exception | None = None) -> None:
        self.columns = columns or {}
        self.error = error
        self.calls: list[tuple[Any, list[dict[str, Any]]]] = []

    def get_feature_service(self, name: str) -> Any:
        return SimpleNamespace(name=name)

    def get_online_features(self, features: Any, entity_rows: list[dict[str, Any]]) -> FakeResponse:
        self.calls.append((features, entity_rows))
        if self.error is not None:
            raise self.error
        return FakeResponse(self.columns)

    async def get_online_features_async(self, features: Any, entity_rows: list[dict[str, Any]]) -> FakeResponse:
        return self.get_online_features(features, entity_rows)


READS = ("sync", "async")


def fetch(store: FakeFeatureStore, applications: list[dict[str, Any]], read: str) -> scoring.OnlineFeatures:
    """The online read through the synchronous or the async entry point (same contract)."""
    if read == "sync":
        return fetch_online_features(store, applications, feature_service="credit_risk_v1")
    return asyncio.run(scoring.fetch_online_features_async(store, applications, feature_service="credit_risk_v1"))


@pytest.mark.parametrize("read", READS)
def test_fetch_online_features_sends_entity_and_request_fields_in_one_call(read: str) -> None:
    store = FakeFeatureStore(online_response([(APPLICATION, STORED, STORED), (APPLICATION, STORED, STORED)]))
    found = fetch(store, [APPLICATION, APPLICATION], read)
    assert len(store.calls) == 1
    service, rows = store.calls[0]
    assert service.name == "credit_risk_v1"
    assert rows == [APPLICATION, APPLICATION]  # join keys + the request fields the ODFV needs, nothing else
    assert found.values[1]["annual_income"] == 64_000.0
    assert found.event_timestamps[1]["annual_income"] == NOW - timedelta(days=10)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (redis.ConnectionError("Connection refused"), "online_store_unavailable"),
        (redis.TimeoutError("Timeout reading from socket"), "online_store_timeout"),
        (ConnectionRefusedError(111, "refused"), "online_store_unavailable"),
        (TimeoutError("timed out"), "online_store_timeout"),
    ],
)
@pytest.mark.parametrize("read", READS)
def test_fetch_online_features_reports_redis_outage_as_unavailable(error: Exception, cause: str, read: str) -> None:
    with pytest.raises(FeatureStoreUnavailable) as caught:
        fetch(FakeFeatureStore(error=error), [APPLICATION], read)
    assert caught.value.cause == cause
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("read", READS)
def test_fetch_online_features_lets_other_errors_through(read: str) -> None:
    with pytest.raises(KeyError):
        fetch(FakeFeatureStore(error=KeyError("x")), [APPLICATION], read)


def test_load_feature_ttls_reads_the_batch_views_of_the_service() -> None:
    def view(name: str, ttl: timedelta | None, features: tuple[str, ...]) -> SimpleNamespace:
        return SimpleNamespace(name=name, ttl=ttl, features=[SimpleNamespace(name=f) for f in features])

    store = SimpleNamespace(
        get_feature_service=lambda name: SimpleNamespace(
            feature_view_projections=[SimpleNamespace(name=n) for n in ("customer_profile", "loan_ratios")]
        ),
        list_feature_views=lambda: [
            view("customer_profile", timedelta(days=90), ("age", "annual_income")),
            view("other_view", timedelta(days=1), ("x",)),
        ],
    )
    assert load_feature_ttls(store, "credit_risk_v1") == {
        "age": timedelta(days=90),
        "annual_income": timedelta(days=90),
    }


# --- freshness ---------------------------------------------------------------------------------


def test_feature_freshness_reports_ages_stale_and_missing() -> None:
    ttls = {"fresh": timedelta(days=45), "edge": timedelta(days=45), "old": timedelta(days=45), "gone": timedelta(1)}
    stamps = {"fresh": NOW - timedelta(days=1), "edge": NOW - timedelta(days=45), "old": NOW - timedelta(days=46)}
    freshness = feature_freshness({**stamps, "gone": None}, ttls, NOW)
    assert freshness.ages_seconds == {"fresh": 86_400.0, "edge": 45 * 86_400.0, "old": 46 * 86_400.0}
    assert freshness.stale == ("old",)  # older than the TTL; exactly the TTL is still fresh
    assert freshness.missing == ("gone",)
    assert freshness.freshest_age_seconds == 86_400.0
    assert freshness.stalest_age_seconds == 46 * 86_400.0


def test_feature_freshness_zero_ttl_never_expires() -> None:
    freshness = feature_freshness({"a": NOW - timedelta(days=3650)}, {"a": timedelta(0)}, NOW)
    assert freshness.stale == ()


def test_feature_freshness_with_nothing_found_has_no_ages() -> None:
    freshness = feature_freshness({}, {"a": timedelta(days=1)}, NOW)
    assert freshness.missing == ("a",)
    assert freshness.freshest_age_seconds is None
    assert freshness.stalest_age_seconds is None


# --- scorer ------------------------------------------------------------------------------------


def score_response(scorer: Scorer, columns: dict[str, list[Any]], applications: list[dict[str, Any]], now=NOW):
    values, stamps = parse_online_response(columns)
    return scorer.score_batch(applications, values, stamps, now)


def test_score_matches_the_booster_on_the_full_row(scorer: Scorer, booster: lightgbm.Booster) -> None:
    [prediction] = score_response(scorer, online_response([(APPLICATION, STORED, STORED)]), [APPLICATION])
    row = {**STORED, **ratios(STORED, APPLICATION), **APPLICATION}
    assert prediction.default_probability == pytest.approx(direct_probability(booster, row))
    assert prediction.features_found is True
    assert prediction.missing_features == []
    assert prediction.stale_features == []
    assert prediction.freshest_feature_age_seconds == timedelta(days=10).total_seconds()
    assert prediction.stalest_feature_age_seconds == timedelta(days=30).total_seconds()
    assert (prediction.model_name, prediction.model_version, prediction.threshold) == ("credit-risk", "3", 0.2)


def test_score_unknown_customer_scores_with_missing_values(scorer: Scorer, booster: lightgbm.Booster) -> None:
    unknown = {**APPLICATION, "customer_id": 999_999}
    [prediction] = score_response(scorer, online_response([(unknown, None, STORED)]), [unknown])
    row = {**dict.fromkeys(CUSTOMER + CREDIT), **{k: STORED[k] for k in ZIPCODE}, **APPLICATION}
    row.update(loan_to_income=None, payment_to_income=None)
    assert prediction.default_probability == pytest.approx(direct_probability(booster, row))
    assert prediction.features_found is False
    assert prediction.missing_features == [*CUSTOMER, *CREDIT, "loan_to_income", "payment_to_income"]
    assert prediction.stale_features == []
    assert prediction.stalest_feature_age_seconds == timedelta(days=30).total_seconds()


def test_score_unknown_customer_and_zipcode_still_scores(scorer: Scorer) -> None:
    unknown = {**APPLICATION, "customer_id": 999_999, "zipcode": "00000"}
    [prediction] = score_response(scorer, online_response([(unknown, None, None)]), [unknown])
    assert 0 <= prediction.default_probability <= 1
    assert prediction.features_found is False
    assert prediction.freshest_feature_age_seconds is None
    assert len(prediction.missing_features) == len(FEATURES) - 3  # everything but the request fields


def test_score_null_stored_value_is_missing_but_found(scorer: Scorer) -> None:
    stored = {**STORED, "bureau_score": None}
    [prediction] = score_response(scorer, online_response([(APPLICATION, stored, STORED)]), [APPLICATION])
    assert prediction.features_found is True
    assert prediction.missing_features == ["bureau_score"]


def test_score_drops_stale_features_like_missing_ones(scorer: Scorer, booster: lightgbm.Booster) -> None:
    later = NOW + timedelta(days=30)  # credit history is now 50 days old (TTL 45); the rest are still fresh
    [prediction] = score_response(scorer, online_response([(APPLICATION, STORED, STORED)]), [APPLICATION], now=later)
    assert prediction.stale_features == [*CREDIT, "payment_to_income"]  # the ratio uses monthly_debt_payments
    assert prediction.missing_features == []
    assert prediction.features_found is True
    row = {**STORED, **ratios(STORED, APPLICATION), **APPLICATION, **dict.fromkeys(CREDIT), "payment_to_income": None}
    assert prediction.default_probability == pytest.approx(direct_probability(booster, row))
    assert prediction.stalest_feature_age_seconds == timedelta(days=60).total_seconds()


def test_score_stale_income_drops_both_ratios(scorer: Scorer) -> None:
    later = NOW + timedelta(days=85)  # customer profile 95 days old (TTL 90)
    [prediction] = score_response(scorer, online_response([(APPLICATION, STORED, STORED)]), [APPLICATION], now=later)
    assert set(CUSTOMER) | {"loan_to_income", "payment_to_income"} <= set(prediction.stale_features)


def test_score_decision_follows_threshold(booster: lightgbm.Booster) -> None:
    values, stamps = parse_online_response(online_response([(APPLICATION, STORED, STORED)]))
    probability = Scorer(booster, model_name="m", model_version="1", threshold=0.5, feature_ttls=TTLS).score(
        APPLICATION, values[0], stamps[0], NOW
    )
    at = probability.default_probability
    decline = Scorer(booster, model_name="m", model_version="1", threshold=at, feature_ttls=TTLS)
    approve = Scorer(booster, model_name="m", model_version="1", threshold=min(at + 0.01, 0.99), feature_ttls=TTLS)
    assert decline.score(APPLICATION, values[0], stamps[0], NOW).decision == "decline"  # at the threshold: decline
    assert approve.score(APPLICATION, values[0], stamps[0], NOW).decision == "approve"


def test_score_batch_equals_single_scores(scorer: Scorer) -> None:
    other = {
        **APPLICATION,
        "customer_id": 8,
        "loan_amount": 90_000.0,
        "loan_term_months": 60,
        "loan_purpose": "medical",
    }
    risky = {**STORED, "credit_utilisation": 0.1, "bureau_score": 780}
    columns = online_response([(APPLICATION, STORED, STORED), (other, risky, None), (APPLICATION, None, STORED)])
    values, stamps = parse_online_response(columns)
    applications = [APPLICATION, other, APPLICATION]
    batch = scorer.score_batch(applications, values, stamps, NOW)
    singles = [scorer.score(a, v, s, NOW) for a, v, s in zip(applications, values, stamps, strict=True)]
    assert [p.default_probability for p in batch] == pytest.approx([p.default_probability for p in singles])
    for p in (*batch, *singles):
        p.default_probability = 0.0
    assert batch == singles
    assert scorer.score_batch([], [], [], NOW) == []


def test_score_batch_rejects_mismatched_lengths(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="2 applications but 1 feature rows"):
        scorer.score_batch([APPLICATION, APPLICATION], [STORED], [{}, {}], NOW)


def test_evaluate_batch_profile_row_carries_inputs_and_outcome(scorer: Scorer) -> None:
    values, stamps = parse_online_response(online_response([(APPLICATION, STORED, STORED)]))
    [scored] = scorer.evaluate_batch([APPLICATION], values, stamps, NOW + timedelta(days=30))
    row = scored.profile_row()
    assert set(FEATURES) <= set(row)
    assert row["bureau_score"] is None  # stale: profiled as the model saw it
    assert row["model_version"] == "3"
    assert row["decision"] in ("approve", "decline")


def test_scorer_rejects_a_booster_with_another_feature_contract() -> None:
    dataset = lightgbm.Dataset(
        np.random.default_rng(0).normal(size=(50, 2)), np.arange(50) % 2, feature_name=["a", "b"]
    )
    other = lightgbm.train({"objective": "binary", "verbose": -1, "num_threads": 1}, dataset, num_boost_round=1)
    with pytest.raises(ModelContractError, match="expects features"):
        Scorer(other, model_name="m", model_version="1", threshold=0.2, feature_ttls=TTLS)


def test_scorer_requires_a_ttl_for_every_stored_feature(booster: lightgbm.Booster) -> None:
    ttls = {name: ttl for name, ttl in TTLS.items() if name != "population"}
    with pytest.raises(ModelContractError, match="population"):
        Scorer(booster, model_name="m", model_version="1", threshold=0.2, feature_ttls=ttls)


# --- error mapping -----------------------------------------------------------------------------


def wrapped(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "status", "cause"),
    [
        (redis.ConnectionError("Error 111 connecting"), 503, "online_store_unavailable"),
        (redis.AuthenticationError("invalid password"), 503, "online_store_unavailable"),
        (redis.TimeoutError("Timeout reading"), 503, "online_store_timeout"),
        (TimeoutError("timed out"), 503, "online_store_timeout"),
        (OnlineStoreError("Redis at localhost:6379 is unreachable"), 503, "online_store_unavailable"),
        (FeatureStoreUnavailable("down", "online_store_timeout"), 503, "online_store_timeout"),
        (wrapped(RuntimeError("feast failed"), redis.ConnectionError("refused")), 503, "online_store_unavailable"),
        (ValueError("boom"), 500, "internal"),
        (KeyError("age"), 500, "internal"),
    ],
)
def test_classify_error_maps_exceptions_to_status_and_cause(error: Exception, status: int, cause: str) -> None:
    answer = classify_error(error)
    assert (answer.status, answer.cause) == (status, cause)
    assert answer.is_outage == (status == 503)
    assert answer.body() == {"error": answer.message, "cause": cause}


def test_classify_error_validation_is_422_naming_fields() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        LoanApplication.model_validate({**APPLICATION, "loan_amount": 1e9, "zipcode": "x"})
    answer = classify_error(caught.value)
    assert (answer.status, answer.cause) == (422, "invalid_request")
    assert "zipcode:" in answer.message
    assert "loan_amount: Input should be less than or equal to 100000" in answer.message


def test_classify_error_internal_does_not_leak_details() -> None:
    answer = classify_error(RuntimeError("password=hunter2"))
    assert (answer.status, answer.cause) == (500, "internal")
    assert "hunter2" not in answer.message


def feast_response(columns: dict[str, list[Any]]) -> Any:
    """A real `feast.OnlineResponse` of these columns (None: not found), each value's kind from its Python type."""
    from feast.online_response import OnlineResponse
    from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse
    from feast.protos.feast.types.Value_pb2 import Value

    kinds = {float: "double_val", int: "int64_val", str: "string_val", bool: "bool_val"}
    proto = GetOnlineFeaturesResponse()
    for name, values in columns.items():
        proto.metadata.feature_names.val.append(name)
        vector = proto.results.add()
        for i, value in enumerate(values):
            message = Value()
            if value is not None:
                setattr(message, kinds[type(value)], value)
            vector.values.append(message)
            vector.event_timestamps.add(seconds=0 if value is None else 1_700_000_000 + i)
    return OnlineResponse(proto)


def test_online_columns_equal_feasts_to_dict() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    response = feast_response(
        {
            "customer_id": [7, 8, 9],
            "zipcode": ["94107", None, "10001"],
            "annual_income": [52_000.5, None, float("nan")],
            "bureau_score": [700, 0, None],
            "flag": [True, False, None],
        }
    )
    stamp = Value(unix_timestamp_val=1_700_000_000)  # a kind Feast converts (to a datetime)
    response.proto.results[1].values[1].CopyFrom(stamp)
    expected = response.to_dict(include_event_timestamps=True)
    columns = scoring.online_columns(response)
    assert list(columns) == list(expected)
    assert repr(columns) == repr(expected)  # repr: NaN == NaN, and the types (int, float, datetime) count
    assert isinstance(columns["zipcode"][1], datetime)


def test_online_columns_of_another_source_are_its_to_dict() -> None:
    columns = online_response([(APPLICATION, STORED, STORED)])
    assert scoring.online_columns(FakeResponse(columns)) == columns
