"""The webhook receiver's checks: MLflow's own signature accepted; unsigned, forged, altered, stale refused."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from mlstack.settings import Settings
from mlstack.stack.registry_events import WebhookRejected, handle_delivery, verify_signature

SECRET = "s3cret"
NOW = 1_800_000_000
BODY = json.dumps(
    {"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "challenger", "version": "2"}}
)


def headers(body: str = BODY, secret: str = SECRET, timestamp: int = NOW, delivery: str = "d-1") -> dict[str, str]:
    """Headers as MLflow's delivery code signs them (its own signing function)."""
    return {
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, str(timestamp), body),
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": str(timestamp),
    }


def test_verify_signature_accepts_what_mlflow_signs_in_any_header_case():
    verify_signature(SECRET, headers(), BODY.encode(), NOW)
    verify_signature(SECRET, {key.lower(): value for key, value in headers().items()}, BODY.encode(), NOW + 299)


@pytest.mark.parametrize(
    ("sent_headers", "body", "message"),
    [
        ({}, BODY, "unsigned delivery: missing X-MLflow-Signature"),
        (headers(secret="other"), BODY, "signature does not match"),
        (headers(), BODY.replace("challenger", "champion"), "signature does not match"),
        (headers(delivery="d-1") | {"X-MLflow-Delivery-Id": "d-2"}, BODY, "signature does not match"),
        (headers(timestamp=NOW - 301), BODY, "more than 300s away"),
        (headers() | {"X-MLflow-Signature": "v2,abc"}, BODY, "must be 'v1,<base64>'"),
        (headers() | {"X-MLflow-Signature": "v1,not base64!"}, BODY, "malformed"),
    ],
)
def test_verify_signature_refuses_with_401_naming_why(sent_headers, body, message):
    with pytest.raises(WebhookRejected, match=message) as caught:
        verify_signature(SECRET, sent_headers, body.encode(), NOW)
    assert caught.value.status == HTTPStatus.UNAUTHORIZED


def refuse_announce(move):
    raise AssertionError(f"nothing may be announced here: {move}")


def test_handle_delivery_ignores_other_aliases_and_models_without_touching_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr("mlstack.stack.registry_events.time.time", lambda: NOW)
    settings = Settings(state_dir=tmp_path, model_name="m", mlflow_tracking_uri="http://127.0.0.1:9")  # nothing there
    reply = handle_delivery(settings, SECRET, headers(), BODY.encode(), refuse_announce)
    assert (reply.status, reply.body["status"]) == (HTTPStatus.ACCEPTED, "ignored")
    other_model = BODY.replace('"name": "m"', '"name": "x"').replace("challenger", "champion")
    reply = handle_delivery(settings, SECRET, headers(other_model), other_model.encode(), refuse_announce)
    assert reply.status == HTTPStatus.ACCEPTED


def test_handle_delivery_answers_400_to_a_signed_body_that_is_not_a_payload(tmp_path, monkeypatch):
    monkeypatch.setattr("mlstack.stack.registry_events.time.time", lambda: NOW)
    settings = Settings(state_dir=tmp_path, model_name="m")
    reply = handle_delivery(settings, SECRET, headers("[1, 2]"), b"[1, 2]", refuse_announce)
    assert reply.status == HTTPStatus.BAD_REQUEST
    assert "not an MLflow webhook payload" in reply.body["error"]
    forged = handle_delivery(settings, SECRET, headers(secret="x"), BODY.encode(), refuse_announce)
    assert forged.status == HTTPStatus.UNAUTHORIZED and "does not match" in forged.body["error"]
