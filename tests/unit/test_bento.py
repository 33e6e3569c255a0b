"""The bento's model bundle: versioning, credential redaction, unreadable bundles."""

from __future__ import annotations

import json

import pytest

from mlstack.serving.bento import BentoError, _redact, bento_version, load_bundled_model


def test_bento_version_names_the_registry_version_and_the_bytes():
    assert bento_version({"model_version": "7", "booster_sha256": "0123456789abcdef"}) == "mlflow-v7-01234567"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://admin:s3cret@mlflow:5000", "http://admin:***@mlflow:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_redact_hides_only_the_password(uri, expected):
    assert _redact(uri) == expected


def test_load_bundled_model_absent_returns_none(tmp_path):
    assert load_bundled_model(tmp_path) is None


def test_load_bundled_model_corrupt_raises_a_clear_error(tmp_path):
    (tmp_path / "booster.txt").write_text("not a model")
    (tmp_path / "model.json").write_text(json.dumps({"model_name": "m", "model_version": "1"}))
    with pytest.raises(BentoError, match="unreadable"):
        load_bundled_model(tmp_path)
