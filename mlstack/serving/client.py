"""HTTP client of the credit-risk service: POST /predict with typed answers (used by the CLI and the demo)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pydantic

from mlstack.errors import StackError
from mlstack.features.store import sample_entity_rows
from mlstack.serving.scoring import Prediction
from mlstack.settings import Settings

EXAMPLE_AMOUNTS = (5_000.0, 25_000.0, 60_000.0)
UNKNOWN_CUSTOMER_ID = 999_999_999  # no rows in the online store: answered with features_found=false, not an error


class ServiceClientError(StackError):
    """The service could not be reached, or answered something that is not a prediction."""


@dataclass(frozen=True)
class ScoredApplication:
    """One application and the service's answer: a `Prediction` on HTTP 200, else the status and the body's start."""

    application: dict[str, Any]
    status: int
    prediction: Prediction | None
    error: str = ""


def service_token(settings: Settings) -> str | None:
    """The bearer token the service expects (MLSTACK_SERVICE_API_TOKEN), if one is set."""
    return settings.service_api_token.get_secret_value() if settings.service_api_token else None


def predict(
    url: str, application: dict[str, Any], token: str | None = None, timeout: float = 30.0
) -> ScoredApplication:
    """POST one application to `{url}/predict`; HTTP errors are answers, an unreachable service raises."""
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}/predict", data=json.dumps(application).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        return ScoredApplication(application, exc.code, None, exc.read().decode(errors="replace")[:200])
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceClientError(f"the credit-risk service at {url} is not reachable ({exc})") from exc
    try:
        return ScoredApplication(application, 200, Prediction.model_validate_json(body))
    except pydantic.ValidationError as exc:
        raise ServiceClientError(f"{url}/predict answered 200 without a prediction: {body[:200]!r}") from exc


def example_applications(settings: Settings) -> list[dict[str, Any]]:
    """Three recent customers asking for a small, a medium and a large loan, plus one unknown customer."""
    applications: list[dict[str, Any]] = [
        {**row, "loan_amount": amount, "loan_term_months": 36, "loan_purpose": "debt_consolidation"}
        for row, amount in zip(sample_entity_rows(settings, n=len(EXAMPLE_AMOUNTS)), EXAMPLE_AMOUNTS, strict=False)
    ]
    if applications:
        applications.append({**applications[0], "customer_id": UNKNOWN_CUSTOMER_ID})
    return applications


def score_examples(settings: Settings, url: str) -> list[ScoredApplication]:
    """The service's answers to `example_applications`, in order."""
    token = service_token(settings)
    return [predict(url, application, token) for application in example_applications(settings)]
