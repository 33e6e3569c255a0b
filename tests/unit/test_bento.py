"""The bento: what its build context ships, its model bundle (versioning, credential redaction, unreadable bundles)."""

from __future__ import annotations

import json
import shutil

import pytest

from mlstack.serving.bento import PACKAGES, BentoError, _not_shipped, _redact, bento_version, load_bundled_model
from mlstack.settings import PROJECT_ROOT


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


def _bundle(directory, calibrator=None):
    from mlstack.training.dataset import split_by_time, train_booster
    from tests.support.training_data import FAST_PARAMS, synthetic_applications

    booster = train_booster(split_by_time(synthetic_applications(800), 0.15, 0.15), FAST_PARAMS)
    booster.save_model(str(directory / "booster.txt"))
    (directory / "model.json").write_text(json.dumps({"model_name": "m", "model_version": "1"}))
    if calibrator is not None:
        (directory / "calibrator.json").write_text(calibrator)
    return booster


def test_load_bundled_model_without_a_calibrator_serves_the_booster_as_it_is(tmp_path):
    from mlstack.training.calibration import IDENTITY

    _bundle(tmp_path)  # a bento built before calibration existed
    bundled = load_bundled_model(tmp_path)
    assert bundled is not None and bundled.calibrator == IDENTITY


def test_load_bundled_model_reads_its_calibrator_and_refuses_a_bad_one(tmp_path):
    from mlstack.training.calibration import Calibrator

    platt = Calibrator("platt", a=-1.1, b=0.3, rows=500, defaults=90)
    _bundle(tmp_path, platt.to_json())
    bundled = load_bundled_model(tmp_path)
    assert bundled is not None and bundled.calibrator == platt
    (tmp_path / "calibrator.json").write_text('{"format": 1, "method": "platt"}')
    with pytest.raises(BentoError, match=r"unreadable.*finite a and b"):
        load_bundled_model(tmp_path)


def test_build_context_ships_code_packages_named_data_but_not_local_state(tmp_path):
    source = tmp_path / "pkg"
    (source / "data").mkdir(parents=True)  # a package: code
    (source / "data" / "__init__.py").write_text("")
    (source / "data" / "schema.py").write_text("X = 1\n")
    (source / "state" / "data").mkdir(parents=True)  # local state: parquet files, no __init__.py
    (source / "state" / "data" / "table.parquet").write_bytes(b"PAR1")
    (source / "registry.db").write_bytes(b"")
    (source / "__pycache__").mkdir()
    shutil.copytree(source, tmp_path / "context", ignore=_not_shipped)
    shipped = sorted(str(path.relative_to(tmp_path / "context")) for path in (tmp_path / "context").rglob("*"))
    assert shipped == ["data", "data/__init__.py", "data/schema.py", "state"]


def test_build_context_ships_every_mlstack_subpackage(tmp_path):
    assert "mlstack" in PACKAGES
    shutil.copytree(PROJECT_ROOT / "mlstack", tmp_path / "mlstack", ignore=_not_shipped)
    expected = {path.parent.name for path in (PROJECT_ROOT / "mlstack").glob("*/__init__.py")}
    assert expected <= {path.parent.name for path in (tmp_path / "mlstack").glob("*/__init__.py")}
    assert "data" in expected
