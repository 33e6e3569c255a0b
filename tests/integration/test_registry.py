"""Model registry against a real `mlflow server` backed by a real PostgreSQL (and the SQLite local default).

Models are tiny real LightGBM Boosters trained here on random data with a planted signal; metrics are
computed here too, so these tests depend only on the registry and the promotion rules.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightgbm
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy.stats import rankdata

from mlstack.data.profiles import profile_frame, read_profile, write_profile
from mlstack.settings import Settings
from mlstack.training import registry
from mlstack.training.dataset import Split, TrainingSet
from mlstack.training.evaluation import HoldoutScore, Metrics
from mlstack.training.promotion import Decision, GateRule, decide, floors_from, rule_from
from mlstack.training.registry import NoPreviousChampionError, RegistryError
from tests.support.factories import make_settings

FEATURES = ["income", "debt_ratio", "late_payments", "tenure_months"]
PARAMS = {"objective": "binary", "learning_rate": 0.1, "num_leaves": 7, "verbose": -1, "num_threads": 1, "seed": 1}
ROUNDS = 40
THRESHOLD = 0.2
# A 1x1 PNG: the registry only stores plots, their content does not matter here.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@dataclass(frozen=True)
class Trained:
    """Everything `log_and_register` takes, for one model."""

    booster: lightgbm.Booster
    training_set: TrainingSet
    split: Split
    score: HoldoutScore  # per-row holdout predictions and their metrics
    signature_frame: pd.DataFrame
    plots: list[Path]
    reference_profile: Path


def make_frame(rows: int = 3000, seed: int = 3) -> pd.DataFrame:
    """Applications in time order with a planted default signal."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    logit = -2.0 + 1.2 * frame["debt_ratio"] + 0.8 * frame["late_payments"] - 0.5 * frame["income"]
    frame["defaulted"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    frame["event_timestamp"] = [start + timedelta(hours=i) for i in range(rows)]
    return frame


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    ranks = rankdata(scores)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    which = np.minimum((scores * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(scores[mask].mean() - labels[mask].mean())
    return float(error)


def measure(booster: lightgbm.Booster, holdout: pd.DataFrame) -> HoldoutScore:
    """Holdout predictions and metrics of `booster`, as evaluation would report them."""
    labels = holdout["defaulted"].to_numpy(dtype=np.float64)
    scores = booster.predict(holdout[FEATURES])
    declined = scores >= THRESHOLD
    true_pos = int((declined & (labels == 1)).sum())
    metrics = Metrics(
        roc_auc=roc_auc(labels, scores),
        pr_auc=float("nan"),
        log_loss=float(-np.mean(labels * np.log(scores) + (1 - labels) * np.log(1 - scores))),
        brier=float(np.mean((scores - labels) ** 2)),
        calibration_error=calibration_error(labels, scores),
        threshold=THRESHOLD,
        precision_at_threshold=true_pos / max(int(declined.sum()), 1),
        recall_at_threshold=true_pos / max(int(labels.sum()), 1),
        decline_rate_at_threshold=float(declined.mean()),
        rows=len(holdout),
        positives=int(labels.sum()),
        nan_predictions=int(np.isnan(scores).sum()),
    )
    return HoldoutScore(labels, scores, metrics)


def train(frame: pd.DataFrame, workdir: Path, *, shuffle_labels: bool = False) -> Trained:
    """Train a tiny Booster on the first 70% (time order), measure it on the last 15%."""
    frame = frame.copy()
    if shuffle_labels:
        frame["defaulted"] = np.random.default_rng(99).permutation(frame["defaulted"].to_numpy())
    n = len(frame)
    split = Split(frame.iloc[: int(n * 0.7)], frame.iloc[int(n * 0.7) : int(n * 0.85)], frame.iloc[int(n * 0.85) :])
    booster = lightgbm.train(PARAMS, lightgbm.Dataset(split.train[FEATURES], split.train["defaulted"]), ROUNDS)
    digest = uuid.uuid5(uuid.NAMESPACE_OID, pd.util.hash_pandas_object(frame).to_numpy().tobytes().hex()).hex[:16]
    training_set = TrainingSet(
        frame=frame,
        feature_service="credit_risk_v1",
        feature_refs=[f"customer_credit:{name}" for name in FEATURES],
        window_start=frame["event_timestamp"].min().to_pydatetime(),
        window_end=frame["event_timestamp"].max().to_pydatetime(),
        fingerprint=f"{n}:{digest}",
    )
    workdir.mkdir(parents=True, exist_ok=True)
    plot = workdir / "roc.png"
    plot.write_bytes(PNG)
    profile = write_profile(profile_frame(split.train[FEATURES]), workdir / "reference_profile.bin")
    return Trained(
        booster, training_set, split, measure(booster, split.holdout), split.holdout[FEATURES], [plot], profile
    )


def register(settings: Settings, trained: Trained) -> registry.RegisteredVersion:
    return registry.log_and_register(
        settings,
        booster=trained.booster,
        training_set=trained.training_set,
        split=trained.split,
        params={**PARAMS, "num_boost_round": ROUNDS},
        metrics=trained.score.metrics,
        plots=trained.plots,
        reference_profile=trained.reference_profile,
        signature_frame=trained.signature_frame,
        git_commit="0123abc",
        extra_tags={"feature_service_version": "1", "feast_project": "mlstack"},
    )


def gate(settings: Settings, challenger: Trained) -> Decision:
    """The gate as the training flow runs it: the champion re-evaluated on the challenger's holdout."""
    champion = registry.champion_version(settings)
    champion_score = None
    if champion is not None:
        booster = registry.load_booster(settings, str(champion.version)).booster
        champion_score = measure(booster, challenger.split.holdout)
    return decide(
        challenger.score,
        champion_score,
        rule_from(settings),
        floors_from(settings),
        champion_version=None if champion is None else str(champion.version),
    )


def metrics(roc_auc: float) -> Metrics:
    return Metrics(roc_auc, 0.4, 0.3, 0.1, 0.01, THRESHOLD, 0.5, 0.5, 0.1, 100, 10, 0)


RULE = GateRule(confidence=0.95, auc_margin=0.01, min_defaults=30, bootstrap_rounds=1000, bootstrap_seed=0)


def promoting(roc_auc: float, champion_auc: float | None = None, champion_version: str | None = None) -> Decision:
    """A promote decision as the gate records it, for tests of the registry's moves (not of the gate's rule)."""
    champion = None if champion_auc is None else metrics(champion_auc)
    return Decision("promote", ["test"], metrics(roc_auc), champion, RULE, None, champion_version)


def snapshot(settings: Settings) -> tuple[dict, dict, dict]:
    """Aliases, model tags and every version's tags: what a no-op must leave unchanged."""
    client = MlflowClient(settings.tracking_uri(), settings.tracking_uri())
    model = client.get_registered_model(settings.model_name)
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    return dict(model.aliases), dict(model.tags), {v.version: dict(v.tags) for v in versions}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def good(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(frame, tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def shuffled(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(frame, tmp_path_factory.mktemp("shuffled"), shuffle_labels=True)


@pytest.fixture
def server_settings(mlflow_server: str, tmp_path: Path) -> Settings:
    """Settings on the module's MLflow server, with a registered model and experiment of this test's own."""
    suffix = uuid.uuid4().hex[:8]
    return make_settings(
        tmp_path,
        mlflow_tracking_uri=mlflow_server,
        model_name=f"credit-risk-{suffix}",
        mlflow_experiment=f"credit-risk-{suffix}",
        floor_max_calibration_error=0.1,
    )


def test_log_and_register_records_versions_lineage_and_artifacts(server_settings, good, tmp_path):
    first = register(server_settings, good)
    second = register(server_settings, good)
    assert (first.version, second.version) == ("1", "2")
    assert second.model_uri == f"models:/{server_settings.model_name}/2"
    assert (first.semantic_version, second.semantic_version) == ("v1.0.0", "v1.0.1")  # same recipe, same data

    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    version = client.get_model_version(server_settings.model_name, "2")
    tags = version.tags
    assert tags["feature_service"] == "credit_risk_v1"
    assert tags["feature_service_version"] == "1"
    assert tags["feast_project"] == "mlstack"
    assert tags["feature_refs"] == ",".join(f"customer_credit:{name}" for name in FEATURES)
    assert tags["training_window_start"] == good.training_set.window_start.isoformat()
    assert tags["training_window_end"] == good.training_set.window_end.isoformat()
    assert tags["training_set_fingerprint"] == good.training_set.fingerprint
    assert tags["training_rows"] == str(len(good.training_set.frame))
    assert tags["git_commit"] == "0123abc"
    assert float(tags["holdout_roc_auc"]) == good.score.metrics.roc_auc
    assert (tags["semantic_version"], tags["model_family"], tags["calibration_method"]) == (
        "v1.0.1",
        "lightgbm",
        "identity",
    )
    assert version.run_id == second.run_id
    aliases = client.get_registered_model(server_settings.model_name).aliases
    assert {alias: str(number) for alias, number in aliases.items()} == {"challenger": "2"}

    run = client.get_run(second.run_id)
    assert run.data.metrics["holdout_roc_auc"] == good.score.metrics.roc_auc
    assert run.data.params["num_leaves"] == "7"
    assert run.data.params["holdout_rows"] == str(len(good.split.holdout))
    assert [a.path for a in client.list_artifacts(second.run_id, "plots")] == ["plots/roc.png"]

    # The reference profile is reachable from the version's lineage tag alone.
    profile_dir = tmp_path / "profile"
    profile_dir.mkdir()
    local = mlflow.artifacts.download_artifacts(artifact_uri=tags["reference_profile_uri"], dst_path=str(profile_dir))
    assert read_profile(Path(local)).columns() == set(FEATURES)

    # The model is the Booster in LightGBM's text format, with signature and input example; no pickle.
    model_dir = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=second.model_uri, dst_path=str(tmp_path / "model"))
    )
    files = {path.name for path in model_dir.iterdir()}
    assert {"MLmodel", "model.lgb", "input_example.json"} <= files, files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert (model_dir / "model.lgb").read_text().startswith("tree\nversion=")
    model = mlflow.models.Model.load(str(model_dir))
    assert model.flavors["lightgbm"]["model_class"] == "lightgbm.basic.Booster"
    assert model.signature.inputs.input_names() == FEATURES


def test_gate_promotes_first_model_and_keeps_it_against_identical_and_worse(server_settings, good, shuffled):
    first = register(server_settings, good)
    decision = gate(server_settings, good)
    assert decision.promote and decision.champion is None
    assert registry.promote(server_settings, first.version, decision)
    assert str(registry.champion_version(server_settings).version) == "1"

    identical = register(server_settings, good)
    decision = gate(server_settings, good)
    assert decision.champion_version == "1"
    assert decision.champion.roc_auc == decision.challenger.roc_auc
    assert not decision.promote
    assert not registry.promote(server_settings, identical.version, decision)

    worse = register(server_settings, shuffled)
    decision = gate(server_settings, shuffled)
    assert shuffled.score.metrics.roc_auc < 0.6
    assert not decision.promote
    assert not registry.promote(server_settings, worse.version, decision)
    assert str(registry.champion_version(server_settings).version) == "1"

    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    tags = client.get_model_version(server_settings.model_name, identical.version).tags
    assert tags["promotion_decision"] == "reject"
    assert tags["promotion_outcome"] == "rejected"
    assert tags["compared_with_version"] == "1"
    assert float(tags["challenger_roc_auc"]) == float(tags["champion_roc_auc"]) == good.score.metrics.roc_auc
    assert tags["promotion_verdict"] == "not_better"
    assert "not better on log loss" in tags["promotion_reasons"]
    assert float(tags["diff_log_loss"]) == 0.0
    worse_tags = client.get_model_version(server_settings.model_name, worse.version).tags
    assert "below the floor" in worse_tags["promotion_reasons"]
    first_tags = client.get_model_version(server_settings.model_name, first.version).tags
    assert first_tags["promotion_outcome"] == "promoted"
    assert first_tags["compared_with_version"] == "none"
    assert registry.champion_history(server_settings) == []


def test_load_booster_champion_reproduces_predictions_and_logged_auc_exactly(server_settings, good):
    registered = register(server_settings, good)
    assert registry.promote(server_settings, registered.version, gate(server_settings, good))

    loaded = registry.load_booster(server_settings, "@champion")
    booster = loaded.booster
    assert isinstance(booster, lightgbm.Booster)
    assert loaded.version == str(loaded.model_version.version) == registered.version
    holdout = good.split.holdout
    assert np.array_equal(booster.predict(holdout[FEATURES]), good.booster.predict(holdout[FEATURES]))
    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    logged_auc = client.get_run(registered.run_id).data.metrics["holdout_roc_auc"]
    assert measure(booster, holdout).metrics.roc_auc == logged_auc


def test_load_booster_unknown_reference_fails_clearly(server_settings, good):
    register(server_settings, good)
    with pytest.raises(RegistryError, match="has no version '7'"):
        registry.load_booster(server_settings, "7")
    with pytest.raises(RegistryError, match="has no version '@champion'"):
        registry.load_booster(server_settings, "@champion")
    with pytest.raises(RegistryError, match="version number or @alias"):
        registry.load_booster(server_settings, "latest")


def test_load_booster_refuses_pickled_model(server_settings, good, tmp_path):
    pytest.importorskip("sklearn")
    registry.tracking(server_settings)
    classifier = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(
        good.split.train[FEATURES], good.split.train["defaulted"]
    )
    experiment = mlflow.get_experiment_by_name(server_settings.mlflow_experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.lightgbm.log_model(classifier, name="model", pip_requirements=["lightgbm"])
    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    client.create_registered_model(server_settings.model_name)
    client.create_model_version(server_settings.model_name, info.model_uri, model_id=info.model_id)
    with pytest.raises(RegistryError, match="not a native LightGBM Booster"):
        registry.load_booster(server_settings, "1")


def test_rollback_moves_champion_back_and_records_why(server_settings, good):
    v1 = register(server_settings, good).version
    v2 = register(server_settings, good).version
    assert registry.promote(server_settings, v1, promoting(0.70))
    better = promoting(0.75, 0.70, v1)
    assert registry.promote(server_settings, v2, better)
    assert registry.champion_history(server_settings) == [v1]

    assert registry.rollback(server_settings, "decline rate doubled overnight") == registry.Rollback(v2, v1)

    assert str(registry.champion_version(server_settings).version) == v1
    assert registry.champion_history(server_settings) == []
    moves = registry.champion_moves(server_settings)
    assert [(m.version, m.previous, m.kind) for m in moves] == [
        (v1, None, "promotion"),
        (v2, v1, "promotion"),
        (v1, v2, "rollback"),
    ]
    assert moves[-1].reason == "decline rate doubled overnight"
    assert moves[-1].by == "mlstack model rollback"
    announced = []
    assert registry.observe_champion(server_settings, "poll", announced.append) is None  # the baseline
    assert registry.champion_moves(server_settings) == moves  # every move was recorded: nothing added
    assert announced == []
    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    from_tags = client.get_model_version(server_settings.model_name, v2).tags
    to_tags = client.get_model_version(server_settings.model_name, v1).tags
    assert from_tags["rollback_reason"] == to_tags["restore_reason"] == "decline rate doubled overnight"
    assert from_tags["rolled_back_to"] == v1
    assert to_tags["restored_from"] == v2
    last = json.loads(client.get_registered_model(server_settings.model_name).tags["last_rollback"])
    assert (last["from"], last["to"], last["reason"]) == (v2, v1, "decline rate doubled overnight")

    # Nothing earlier than v1: a second rollback refuses and changes nothing.
    before = snapshot(server_settings)
    with pytest.raises(NoPreviousChampionError, match="no previous champion"):
        registry.rollback(server_settings, "again")
    assert snapshot(server_settings) == before


def test_rollback_without_previous_champion_raises_and_changes_nothing(server_settings, good):
    with pytest.raises(NoPreviousChampionError, match="current champion: none"):
        registry.rollback(server_settings, "no model at all")

    version = register(server_settings, good).version
    assert registry.promote(server_settings, version, gate(server_settings, good))
    before = snapshot(server_settings)
    with pytest.raises(NoPreviousChampionError, match="nothing was changed"):
        registry.rollback(server_settings, "bad day")
    assert snapshot(server_settings) == before
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.rollback(server_settings, " ")


def test_promote_refuses_decision_made_against_a_champion_that_changed(server_settings, good):
    v1, v2, v3 = (register(server_settings, good).version for _ in range(3))
    assert registry.promote(server_settings, v1, promoting(0.70))

    # v2 and v3 are both judged against champion v1; v2 gets promoted first.
    for_v2 = promoting(0.75, 0.70, v1)
    for_v3 = promoting(0.80, 0.70, v1)
    assert registry.promote(server_settings, v2, for_v2)

    assert not registry.promote(server_settings, v3, for_v3)
    assert str(registry.champion_version(server_settings).version) == v2
    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    tags = client.get_model_version(server_settings.model_name, v3).tags
    assert tags["promotion_outcome"] == "refused"
    assert "it was made against version 1, the champion now is version 2" in tags["promotion_refusal"]

    # A "first model" decision is stale once a champion exists; so is promoting the champion itself.
    assert not registry.promote(server_settings, v3, promoting(0.80))
    same = promoting(0.80, 0.75, v2)
    assert not registry.promote(server_settings, v2, same)
    assert str(registry.champion_version(server_settings).version) == v2
    assert registry.champion_history(server_settings) == [v1]


def test_concurrent_promotions_against_same_champion_let_exactly_one_win(server_settings, good):
    v1, v2, v3 = (register(server_settings, good).version for _ in range(3))
    assert registry.promote(server_settings, v1, promoting(0.70))
    decisions = {
        v2: promoting(0.75, 0.70, v1),
        v3: promoting(0.76, 0.70, v1),
    }
    results: dict[str, bool] = {}
    barrier = threading.Barrier(2)

    def run(version: str) -> None:
        barrier.wait()
        results[version] = registry.promote(server_settings, version, decisions[version])

    threads = [threading.Thread(target=run, args=(version,)) for version in decisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [version for version, won in results.items() if won]
    assert len(winners) == 1
    assert str(registry.champion_version(server_settings).version) == winners[0]
    assert registry.champion_history(server_settings) == [v1]


def test_describe_shows_version_aliases_lineage_and_metrics(server_settings, good):
    registered = register(server_settings, good)
    assert registry.promote(server_settings, registered.version, gate(server_settings, good))
    info = registry.describe(server_settings, "@champion")
    assert info["version"] == registered.version
    assert info["aliases"] == "@challenger,@champion"
    assert info["run_id"] == registered.run_id
    assert info["status"] == "READY"
    assert info["feature_service"] == "credit_risk_v1"
    assert info["training_set_fingerprint"] == good.training_set.fingerprint
    assert info["promotion_decision"] == "promote"
    assert float(info["holdout_roc_auc"]) == good.score.metrics.roc_auc
    assert float(info["gate_challenger_roc_auc"]) == good.score.metrics.roc_auc  # the gate's numbers on the run
    assert all(isinstance(value, str) for value in info.values())


def test_log_and_register_refuses_missing_artifacts_before_writing(server_settings, good, tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(RegistryError, match=r"nope\.bin"):
        registry.log_and_register(
            server_settings,
            booster=good.booster,
            training_set=good.training_set,
            split=good.split,
            params=PARAMS,
            metrics=good.score.metrics,
            plots=good.plots,
            reference_profile=missing,
            signature_frame=good.signature_frame,
            git_commit=None,
        )
    client = MlflowClient(server_settings.tracking_uri(), server_settings.tracking_uri())
    assert client.search_registered_models(f"name = '{server_settings.model_name}'") == []


def test_sqlite_local_default_logs_registers_and_promotes(tmp_path, good):
    settings = make_settings(tmp_path / "state", floor_max_calibration_error=0.1)
    assert settings.mlflow_tracking_uri is None
    registered = register(settings, good)
    assert registry.promote(settings, registered.version, gate(settings, good))

    assert (settings.mlflow_dir / "mlflow.db").is_file()
    artifacts = settings.mlflow_dir / "artifacts"
    assert list(artifacts.rglob("model.lgb")), "model artifacts must live under the state dir"
    assert list(artifacts.rglob("reference_profile.bin"))
    loaded = registry.load_booster(settings, "@champion")
    booster = loaded.booster
    assert loaded.version == registered.version
    holdout = good.split.holdout[FEATURES]
    assert np.array_equal(booster.predict(holdout), good.booster.predict(holdout))
