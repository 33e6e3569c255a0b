"""Packaging: `bentoml build` with the champion inside, served by `bentoml serve <tag>` without MLflow."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from mlstack.features.store import get_store
from mlstack.processes import free_port
from mlstack.serving import scoring
from mlstack.serving.bento import MODEL_DIR_NAME, build_bento, load_bundled_model
from mlstack.stack.rollout import roll_out_if_needed, serves_version
from mlstack.stack.service import start_service, stop_service
from mlstack.training import evaluation, model_input, registry
from tests.support.serving_stack import applications_of, build_serving_stack


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    stack = build_serving_stack(tmp_path_factory.mktemp("bento"))
    try:
        yield stack, build_bento(stack.settings)
    finally:
        stop_service(stack.settings, timeout=10)
        stack.server.stop()


def test_bento_tag_and_labels_record_the_champion_version(built):
    stack, bento = built
    champion = registry.champion_version(stack.settings)
    assert bento.model_version == str(champion.version)
    assert re.fullmatch(rf"credit-risk:mlflow-v{champion.version}-[0-9a-f]{{8}}", bento.tag)
    manifest = yaml.safe_load((bento.path / "bento.yaml").read_text())
    assert manifest["labels"]["mlflow_model_version"] == str(champion.version)
    assert manifest["labels"]["semantic_version"] == champion.tags["semantic_version"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", manifest["labels"]["semantic_version"])
    assert manifest["service"] == "services.credit_risk:CreditRisk"


def test_bento_model_scores_exactly_like_the_registered_champion(built):
    stack, bento = built
    bundled = load_bundled_model(bento.path / "src" / MODEL_DIR_NAME)
    assert bundled is not None and bundled.version == bento.model_version
    registered = registry.load_booster(stack.settings, "@champion")
    reference = registered.booster
    rows = np.random.default_rng(0).normal(size=(200, reference.num_feature()))
    np.testing.assert_array_equal(bundled.booster.predict(rows), reference.predict(rows))
    assert bundled.calibrator == registered.calibrator and not bundled.calibrator.is_identity


def test_bento_contains_service_feature_repo_and_no_local_state(built):
    _, bento = built
    source = bento.path / "src"
    for required in (
        "services/credit_risk.py",
        "feature_store/feature_store.yaml",
        "mlstack/serving/runtime.py",
        "mlstack/data/schema.py",  # a package named `data` is code, not local state
    ):
        assert (source / required).is_file(), required
    assert not list(source.rglob("*.parquet")) and not list(source.rglob("*.db")), "local state leaked into the bento"
    requirements = (bento.path / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^lightgbm==", requirements, re.M) and re.search(r"^feast(\[.*\])?==", requirements, re.M)
    assert not re.search(r"^(pytest|ruff)==", requirements, re.M), "dev tools in the runtime image"


def test_bento_dockerfile_runs_the_service_as_a_non_root_user(built):
    _, bento = built
    instructions = [
        line.split(None, 1)
        for line in bento.dockerfile.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    users = [i for i, parts in enumerate(instructions) if parts[0].upper() == "USER"]
    assert users, "the generated Dockerfile never switches user (the image would run as root)"
    last_user = instructions[users[-1]][1].strip()
    assert last_user.split(":")[0] not in {"root", "0"}, last_user
    entrypoints = [i for i, parts in enumerate(instructions) if parts[0].upper() in {"ENTRYPOINT", "CMD"}]
    assert entrypoints and entrypoints[-1] > users[-1], "the entrypoint is not set after the switch to the user"


def test_bento_serves_its_own_model_with_mlflow_unreachable(built):
    stack, bento = built
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the bento must not need MLflow
    env = {**stack.environment(), "MLSTACK_MLFLOW_TRACKING_URI": unreachable}
    service = start_service(stack.settings, env, target=bento.tag)
    try:
        assert service.target == bento.tag
        response = httpx.post(f"{service.url}/predict", json=stack.known, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == bento.model_version
        # The event-triggered rollout finds the champion already served and builds nothing.
        assert serves_version(stack.settings, bento.model_version)
        assert not serves_version(stack.settings, str(int(bento.model_version) + 1))
        assert roll_out_if_needed(stack.settings) is None
    finally:
        stop_service(stack.settings, timeout=10)


def _served(stack, body: dict, target: str | None) -> list[dict]:
    """`/predict_batch` answers of `bentoml serve` on `target` (a bento tag; None: the service in source)."""
    extra = {} if target is None else {"target": target}
    service = start_service(stack.settings, stack.environment(), **extra)
    try:
        response = httpx.post(f"{service.url}/predict_batch", json=body, timeout=30)
    finally:
        stop_service(stack.settings, timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def test_served_booster_and_calibrator_equal_the_offline_ones_row_for_row(built):
    stack, bento = built
    champion = registry.load_booster(stack.settings, "@champion")
    assert champion.calibrator.method == "platt"  # every training run calibrates: there is something to apply
    applications = applications_of(stack, 40)
    body = {"applications": applications}

    bento_rows = _served(stack, body, bento.tag)  # the bento: model/ booster + calibrator, no MLflow needed
    source_rows = _served(stack, body, None)  # the source service: @champion loaded from MLflow
    assert {row["model_version"] for row in bento_rows + source_rows} == {champion.version}

    # The batch path on the same model inputs: the online values the service read, the request fields.
    online = scoring.fetch_online_features(get_store(stack.settings, stack.target), applications)
    fresh = [i for i, row in enumerate(source_rows) if not row["stale_features"] and row["features_found"]]
    assert len(fresh) >= 20, "too few applications with fresh features to compare"
    frame = pd.DataFrame([{**online.values[i], **applications[i]} for i in fresh])[list(model_input.FEATURES)]
    offline = evaluation.predict(champion.booster, frame, champion.calibrator)
    uncalibrated = champion.booster.predict(model_input.encode(frame))
    served_bento = np.array([bento_rows[i]["default_probability"] for i in fresh])
    served_source = np.array([source_rows[i]["default_probability"] for i in fresh])
    np.testing.assert_array_equal(served_bento, offline)
    np.testing.assert_array_equal(served_source, offline)
    assert not np.allclose(offline, uncalibrated)  # the calibrator really changed the probabilities
