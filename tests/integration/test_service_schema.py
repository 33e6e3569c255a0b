"""The published OpenAPI document tells the truth: schemathesis fuzzes every operation of a real `bentoml serve`.

Each operation gets positive cases (valid per the schema) and negative ones (breaking it); every
answer must be no server error and match the response schema published for its status code.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from mlstack.serving.scoring import MAX_CUSTOMER_ID
from tests.support.serving_stack import GOOD, background_service

EXAMPLES = 60  # per operation and generation mode: about a minute in all on a busy 2-core machine
SCORING = {("POST", "/predict"), ("POST", "/predict_batch")}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A real `bentoml serve` on a servable stack (no token: the fuzzer reaches the scoring code)."""
    with background_service(tmp_path_factory.mktemp("schema"), {}) as (started, stack):
        yield started.url, stack


def fuzz(operation, mode: GenerationMode, url: str) -> None:
    """Hypothesis over `operation`'s cases in `mode`; raises the first failing check (shrunk)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # nothing written into the working tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def check(case) -> None:
        response = case.call(base_url=url, timeout=30)
        case.validate_response(response, checks=(not_a_server_error, response_schema_conformance))

    check()


def test_every_operation_answers_as_published(service):
    url, _ = service
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(operation.method.upper(), operation.path) for operation in operations} >= SCORING
    failures: dict[str, BaseException] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, url)
            except Unsatisfiable:  # nothing to break in an operation without inputs (GET /livez ...)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:
                failures[f"{operation.label} [{mode.value}]"] = exc
    assert not failures, "\n\n".join(f"{label}:\n{exc}" for label, exc in failures.items())


def test_validation_error_names_each_field_as_published(service):
    """Finding (b): BentoML's 400 lists the bad fields in `detail`; the published schema says so now."""
    url, _ = service
    response = httpx.post(f"{url}/predict", json={**GOOD, "zipcode": "12", "loan_amount": -1}, timeout=10)
    assert response.status_code == 400
    assert {tuple(issue["loc"]) for issue in response.json()["detail"]} == {("zipcode",), ("loan_amount",)}
    spec = httpx.get(f"{url}/docs.json", timeout=10).json()
    detail = spec["components"]["schemas"]["ValidationErrorBody"]["properties"]["detail"]
    assert detail["type"] == "array"
    for route in ("/predict", "/predict_batch"):
        responses = spec["paths"][route]["post"]["responses"]
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorBody")
        assert {"401", "413", "415", "503"} <= set(responses)


def test_customer_id_beyond_int64_is_a_400_not_a_500(service):
    """Finding (a): Feast's INT64 entity key cannot hold 2**63; it was a ValueError inside Feast, answered 500."""
    url, stack = service
    too_big = {**stack.known, "customer_id": MAX_CUSTOMER_ID + 1}
    for path, body in (("/predict", too_big), ("/predict_batch", {"applications": [too_big]})):
        response = httpx.post(f"{url}{path}", json=body, timeout=10)
        assert response.status_code == 400, response.text
        assert "customer_id" in response.text
    largest = httpx.post(f"{url}/predict", json={**stack.known, "customer_id": MAX_CUSTOMER_ID}, timeout=10)
    assert largest.status_code == 200, largest.text
    assert largest.json()["features_found"] is False


def test_form_bodies_get_415_not_a_500(service):
    url, _ = service
    response = httpx.post(f"{url}/predict", files={"customer_id": (None, "1")}, timeout=10)
    assert response.status_code == 415, response.text
    assert response.json()["cause"] == "unsupported_media_type"
