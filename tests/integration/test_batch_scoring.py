"""Batch scoring against the service's own scoring path: same application, same moment, same probability.

A real servable stack (embedded Redis with materialised features, Feast + DuckDB offline store,
champion v1 in MLflow): the service side reads Redis (`ServingRuntime.predict`), the batch side reads
Feast's historical retrieval at each row's timestamp.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from mlstack.data.schema import CUSTOMER_PROFILE_FILE
from mlstack.features.store import FEATURE_SERVICE_VERSION
from mlstack.serving import batch
from mlstack.serving.runtime import ServingRuntime
from mlstack.settings import get_settings
from tests.support.serving_stack import build_serving_stack

APPLICANTS = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = build_serving_stack(tmp_path_factory.mktemp("batch-scoring"))
    try:
        yield stack
    finally:
        stack.server.stop()


def _applications(settings, moment: datetime) -> pd.DataFrame:
    """Known customers at their latest zipcode, two unknown ones, varied request fields; all at `moment`."""
    profile = pd.read_parquet(settings.data_dir / CUSTOMER_PROFILE_FILE, columns=["customer_id", "zipcode"])
    known = profile.drop_duplicates("customer_id", keep="last").head(APPLICANTS)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "customer_id": [*known["customer_id"].tolist(), 10_000_001, 10_000_002],
            "zipcode": [*known["zipcode"].tolist(), "99999", known["zipcode"].iloc[0]],
        }
    )
    frame["loan_amount"] = rng.choice([2_500.0, 12_000.0, 40_000.0], len(frame))
    frame["loan_term_months"] = rng.choice([36, 60], len(frame))
    frame["loan_purpose"] = rng.choice(["car", "debt_consolidation", "medical"], len(frame))
    frame["event_timestamp"] = pd.Timestamp(moment)
    return frame


@pytest.mark.slow
def test_batch_and_service_give_the_same_probability_at_the_same_moment(stack, tmp_path):
    settings = stack.settings.model_copy(update={"batch_chunk_rows": 9})  # several chunks
    runtime = ServingRuntime.from_settings(settings, profile=False)
    moment = datetime.now(UTC)
    applications = _applications(settings, moment)
    request = applications.drop(columns=["event_timestamp"]).to_dict(orient="records")
    served = runtime.predict(request)
    applications.to_parquet(tmp_path / "applications.parquet", index=False)

    result = batch.score_applications(settings, str(tmp_path / "*.parquet"), tmp_path / "out" / "scores.parquet")

    scored = pd.read_parquet(result.output)
    assert result.rows == len(applications) and result.chunks == -(-len(applications) // 9)
    assert scored["customer_id"].tolist() == applications["customer_id"].tolist()  # input order kept
    online = np.array([prediction.default_probability for prediction in served])
    np.testing.assert_allclose(scored["default_probability"].to_numpy(), online, rtol=1e-12, atol=0)
    assert scored["decision"].tolist() == [prediction.decision for prediction in served]
    assert set(scored["model_version"]) == {served[0].model_version}
    assert set(scored["model_name"]) == {served[0].model_name}
    assert set(scored["feature_service_version"]) == {FEATURE_SERVICE_VERSION}
    assert not served[-2].features_found  # the unknown customer was scored on missing features by both
    assert len(set(online)) > APPLICANTS // 2  # different applicants, different scores: not a constant


@pytest.mark.slow
def test_batch_input_without_a_column_fails_naming_it_and_writes_nothing(stack, tmp_path):
    applications = _applications(stack.settings, datetime.now(UTC)).drop(columns=["loan_purpose"])
    applications.to_parquet(tmp_path / "applications.parquet", index=False)
    output = tmp_path / "scores.parquet"

    with pytest.raises(batch.BatchScoringError, match=r"lacks column\(s\) \['loan_purpose'\]"):
        batch.score_applications(stack.settings, str(tmp_path / "applications.parquet"), output)
    with pytest.raises(batch.BatchScoringError, match="no input file matches"):
        batch.score_applications(stack.settings, str(tmp_path / "nothing-*.parquet"), output)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["applications.parquet"]


@pytest.mark.slow
def test_score_batch_flow_writes_scores_of_every_row(stack, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.score import score_batch_flow

    for name, value in stack.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    get_settings.cache_clear()
    applications = _applications(stack.settings, datetime.now(UTC))
    applications.to_parquet(tmp_path / "applications.parquet", index=False)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            result = score_batch_flow(input=str(tmp_path / "applications.parquet"), output=str(tmp_path / "s.parquet"))
    finally:
        get_settings.cache_clear()

    scored = pd.read_parquet(tmp_path / "s.parquet")
    assert result.rows == len(scored) == len(applications)
    assert list(scored.columns) == [*applications.columns, *batch.SCORE_COLUMNS]
    assert scored["default_probability"].between(0, 1).all()
