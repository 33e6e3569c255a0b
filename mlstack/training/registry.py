"""MLflow tracking and model registry: log a trained model with its lineage, load it back, promote, roll back.

Everything goes through `mlflow.MlflowClient` and `mlflow.lightgbm`. Aliases carry the lifecycle:
`@challenger` is the newest registered version, `@champion` the one serving. Every champion move
is recorded: decision tags on the version, and one `champion_move.*` tag per move on the registered
model (`champion_history`), from which `rollback` derives where to go back to.

Promotions and rollbacks are serialised: an exclusive `flock` under the state dir for processes on
one machine, and a compare-and-set against the tracking server for everyone else (MLflow has no
atomic alias CAS, so the champion is re-read right before the move and verified right after).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import lightgbm
import mlflow
import mlflow.lightgbm
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.training.calibration import CALIBRATOR_FILE, IDENTITY, Calibrator
from mlstack.training.champion_history import (
    ChampionMove,
    MoveKind,
    moves_from_tags,
    rollback_stack,
    unrecorded_move,
)
from mlstack.training.dataset import Split, TrainingSet
from mlstack.training.evaluation import Metrics
from mlstack.training.promotion import Decision, plan_rollback
from mlstack.training.versioning import (
    CALIBRATION_TAG,
    NO_CALIBRATION,
    SEMANTIC_VERSION_TAG,
    Recipe,
    hyperparameters_fingerprint,
    latest_versioned,
    next_semantic_version,
)

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"  # the earlier champions as a JSON list, written before moves were recorded
ROLLOUT_TAG = "champion_rollout"  # the champion version whose rollout was last started (announced)
LAST_ROLLBACK_TAG = "last_rollback"
MODEL_ARTIFACT = "model"
PLOTS_DIR = "plots"
REFERENCE_PROFILE_DIR = "reference_profile"
CALIBRATOR_DIR = "calibrator"
CALIBRATOR_URI_TAG = "calibrator_uri"  # absent on versions registered before calibration: identity
BOOSTER_CLASS = "lightgbm.basic.Booster"
MODEL_FAMILY = "lightgbm"  # what `log_and_register` logs; a semantic version's major part changes with it
LOCK_TIMEOUT_SECONDS = 120.0
_SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


class RegistryError(StackError):
    """The tracking server or registry refused or failed an operation; nothing further was changed."""


class NoPreviousChampionError(RegistryError):
    """A rollback was asked for, but there is no earlier champion to return to."""


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by `log_and_register`."""

    name: str
    version: str
    run_id: str
    model_uri: str  # models:/<name>/<version>
    semantic_version: str = ""  # v<major>.<minor>.<patch> from lineage (`versioning`)


@dataclass(frozen=True)
class LoadedBooster:
    """A registered version's native Booster, its calibrator and its registry record (`load_booster`)."""

    booster: lightgbm.Booster
    model_version: ModelVersion
    calibrator: Calibrator = IDENTITY  # versions registered before calibration existed have none

    @property
    def version(self) -> str:
        """The version number as a string ("3")."""
        return str(self.model_version.version)


@dataclass(frozen=True)
class Rollback:
    """A finished `rollback`: the champion it moved away from (None: there was none) and the one restored."""

    previous: str | None
    restored: str


def tracking(settings: Settings) -> MlflowClient:
    """Point MLflow (tracking + registry) at the settings' URI, get or create the experiment; return a client."""
    uri = settings.tracking_uri()
    if _is_local_store(uri):
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with _mlflow_errors(settings, "open the experiment"):
        _experiment_id(client, settings)
    return client


def _is_local_store(uri: str) -> bool:
    """True unless `uri` is a tracking server (then the server decides where artifacts go)."""
    return urlparse(uri).scheme not in _SERVER_SCHEMES


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    name = settings.mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if _is_local_store(settings.tracking_uri()):
            # Without a server MLflow would write artifacts to ./mlruns of whatever the cwd is.
            location = (settings.mlflow_dir / "artifacts").resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # created concurrently by another process
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise RegistryError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) "
            "or set MLSTACK_MLFLOW_EXPERIMENT to another name."
        )
    return experiment.experiment_id


@contextlib.contextmanager
def _mlflow_errors(settings: Settings, action: str) -> Iterator[None]:
    """Turn MLflow failures into a RegistryError that names the action and the tracking URI."""
    try:
        yield
    except RegistryError:
        raise
    except MlflowException as exc:
        raise RegistryError(f"could not {action} (MLflow at {settings.tracking_uri()}): {exc.message}") from exc


def lineage_tags(
    training_set: TrainingSet, metrics: Metrics, git_commit: str | None, extra_tags: dict[str, str] | None
) -> dict[str, str]:
    """Tags tying a model version to its features, data and code (extra_tags may add or override)."""
    extra = dict(extra_tags or {})
    tags = {
        "feature_service": training_set.feature_service,
        "feature_service_version": extra.pop("feature_service_version", "unknown"),
        "feast_project": extra.pop("feast_project", "unknown"),
        "feature_refs": ",".join(training_set.feature_refs),
        "training_window_start": training_set.window_start.isoformat(),
        "training_window_end": training_set.window_end.isoformat(),
        "training_set_fingerprint": training_set.fingerprint,
        "training_rows": str(len(training_set.frame)),
        "git_commit": git_commit or "unknown",
    }
    tags.update({f"holdout_{key}": repr(value) for key, value in metrics.as_dict().items()})
    tags.update({key: str(value) for key, value in extra.items()})
    return tags


def log_and_register(
    settings: Settings,
    *,
    booster: lightgbm.Booster,
    training_set: TrainingSet,
    split: Split,
    params: dict,
    metrics: Metrics,
    plots: list[Path],
    reference_profile: Path,
    signature_frame: pd.DataFrame,
    git_commit: str | None,
    extra_tags: dict[str, str] | None = None,
    calibrator: Calibrator = IDENTITY,
    extra_metrics: dict[str, float] | None = None,
) -> RegisteredVersion:
    """Log one training run (params, holdout metrics, plots, reference profile, native Booster, calibrator JSON).

    Registers it as a new version. The calibrator is a JSON artifact of the run (never a pickle),
    named on the version by the `calibrator_uri` tag; `extra_metrics` go on the run as they are.

    The new version gets lineage tags and the `@challenger` alias. Inputs are checked before anything
    is written; a failure during logging leaves a FAILED run and no model version.
    """
    plots = [Path(plot) for plot in plots]
    reference_profile = Path(reference_profile)
    missing = [str(path) for path in [*plots, reference_profile] if not path.is_file()]
    if missing:
        raise RegistryError(f"cannot log the model: missing artifact file(s): {', '.join(missing)}")
    if signature_frame.empty:
        raise RegistryError("cannot log the model: signature_frame has no rows (need encoded model input rows)")

    client = tracking(settings)
    name = settings.model_name
    with _mlflow_errors(settings, f"log and register model {name!r}"):
        experiment_id = _experiment_id(client, settings)
        tags = lineage_tags(training_set, metrics, git_commit, extra_tags)
        run_tags = {key: value for key, value in tags.items() if not key.startswith("holdout_")}
        if git_commit:
            run_tags["mlflow.source.git.commit"] = git_commit
        run_name = f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
            mlflow.log_params(
                {
                    **params,
                    "train_rows": len(split.train),
                    "validation_rows": len(split.validation),
                    "calibration_rows": len(split.calibration),
                    "holdout_rows": len(split.holdout),
                }
            )
            mlflow.log_metrics({f"holdout_{key}": value for key, value in metrics.as_dict().items()})
            if extra_metrics:
                mlflow.log_metrics(extra_metrics)
            with tempfile.TemporaryDirectory(prefix="mlstack-calibrator-") as tmp:
                calibrator_file = Path(tmp) / CALIBRATOR_FILE
                calibrator_file.write_text(calibrator.to_json())
                mlflow.log_artifact(str(calibrator_file), artifact_path=CALIBRATOR_DIR)
            tags[CALIBRATOR_URI_TAG] = f"{run.info.artifact_uri}/{CALIBRATOR_DIR}/{CALIBRATOR_FILE}"
            tags[CALIBRATION_TAG] = calibrator.method
            tags["calibrator"] = calibrator.describe()
            for plot in plots:
                mlflow.log_artifact(str(plot), artifact_path=PLOTS_DIR)
            mlflow.log_artifact(str(reference_profile), artifact_path=REFERENCE_PROFILE_DIR)
            tags["reference_profile_uri"] = f"{run.info.artifact_uri}/{REFERENCE_PROFILE_DIR}/{reference_profile.name}"
            example = signature_frame.head(5)
            signature = infer_signature(signature_frame, booster.predict(example))
            model_info = mlflow.lightgbm.log_model(
                booster,
                name=MODEL_ARTIFACT,
                signature=signature,
                input_example=example,
                # Pinned explicitly: inferring them would re-import the model in a subprocess (slow).
                pip_requirements=[
                    f"lightgbm=={lightgbm.__version__}",
                    f"numpy=={np.__version__}",
                    f"pandas=={pd.__version__}",
                ],
            )
        _ensure_registered_model(client, name)
        semantic = _semantic_version_tags(client, name, tags, params)
        tags.update(semantic)
        version = client.create_model_version(
            name=name,
            source=model_info.model_uri,
            run_id=run.info.run_id,
            tags=tags,
            model_id=model_info.model_id,
        )
        client.set_registered_model_alias(name, CHALLENGER, str(version.version))
    logger.info("registered %s version %s (run %s)", name, version.version, run.info.run_id)
    return RegisteredVersion(
        name,
        str(version.version),
        run.info.run_id,
        f"models:/{name}/{version.version}",
        semantic[SEMANTIC_VERSION_TAG],
    )


def _semantic_version_tags(client: MlflowClient, name: str, tags: dict[str, str], params: dict) -> dict[str, str]:
    """The recipe tags and semantic version of a version about to be registered with `tags` and `params`.

    Compared with the newest registered version that has one. Two registrations at the same instant
    may get the same semantic version; MLflow's integer version stays the unique one.
    """
    recipe = Recipe(
        feature_service_version=tags["feature_service_version"],
        model_family=MODEL_FAMILY,
        hyperparameters=hyperparameters_fingerprint(params),
        calibration=str(tags.get(CALIBRATION_TAG) or params.get(CALIBRATION_TAG) or NO_CALIBRATION),
        data=tags["training_set_fingerprint"],
    )
    existing = {int(version.version): version.tags for version in client.search_model_versions(f"name = '{name}'")}
    semantic = next_semantic_version(recipe, latest_versioned(existing))
    return recipe.to_tags() | {SEMANTIC_VERSION_TAG: str(semantic)}


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="Credit-risk default classifier (LightGBM Booster).")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _resolve(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    """The version `ref` names: a version number ("3") or an alias ("@champion")."""
    ref = str(ref).strip()
    try:
        if ref.startswith("@") and len(ref) > 1:
            return client.get_model_version_by_alias(name, ref[1:])
        if ref.isdigit():
            return client.get_model_version(name, ref)
    except MlflowException as exc:
        if _missing(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
            raise RegistryError(f"model {name!r} has no version {ref!r}") from exc
        raise
    raise RegistryError(f"model reference must be a version number or @alias (e.g. 3, @champion), got {ref!r}")


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def load_booster(settings: Settings, ref: str) -> LoadedBooster:
    """The native Booster of version `ref` ("3" or "@champion") and its ModelVersion.

    Only a model logged as a Booster (LightGBM text format) is loaded: anything else would be
    unpickled, which can run arbitrary code, so it is refused.
    """
    client = tracking(settings)
    name = settings.model_name
    with _mlflow_errors(settings, f"load model {name!r} {ref}"):
        version = _resolve(client, name, ref)
        with tempfile.TemporaryDirectory(prefix="mlstack-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=tmp)
            flavor = Model.load(local).flavors.get("lightgbm") or {}
            if flavor.get("model_class", BOOSTER_CLASS) != BOOSTER_CLASS or "data" not in flavor:
                raise RegistryError(
                    f"model {name!r} version {version.version} is not a native LightGBM Booster "
                    f"(flavor {flavor or 'missing'}); refusing to load it"
                )
            booster = lightgbm.Booster(model_file=os.path.join(local, flavor["data"]))
            calibrator = IDENTITY
            uri = version.tags.get(CALIBRATOR_URI_TAG)
            if uri:
                path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
                try:
                    calibrator = Calibrator.from_json(Path(path).read_text())
                except ValueError as exc:
                    raise RegistryError(
                        f"model {name!r} version {version.version} has an unreadable calibrator ({uri}): {exc}"
                    ) from exc
    return LoadedBooster(booster, version, calibrator)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points to, read fresh from the registry (None: no such alias or model)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version `@alias` (e.g. "challenger") points to now; None when there is no such alias or model."""
    client = tracking(settings)
    with _mlflow_errors(settings, f"read @{alias}"):
        return _alias_version(client, settings.model_name, alias)


def champion_version(settings: Settings) -> ModelVersion | None:
    """The current `@champion` version (None: no champion yet)."""
    client = tracking(settings)
    with _mlflow_errors(settings, "read the champion"):
        version = _alias_version(client, settings.model_name, CHAMPION)
        return None if version is None else client.get_model_version(settings.model_name, version)


def champion_history(settings: Settings) -> list[str]:
    """Earlier champions a rollback walks back through, oldest first (the current one is not included)."""
    client = tracking(settings)
    with _mlflow_errors(settings, "read the champion history"):
        return _read_history(client, settings.model_name)


def champion_moves(settings: Settings) -> list[ChampionMove]:
    """Every recorded move of `@champion`, oldest first (`champion_history.tenures` says who held it when)."""
    client = tracking(settings)
    with _mlflow_errors(settings, "read the champion moves"):
        return _read_moves(client, settings.model_name)


def _model_tags(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise


def _read_moves(client: MlflowClient, name: str, tags: dict[str, str] | None = None) -> list[ChampionMove]:
    tags = _model_tags(client, name) if tags is None else tags
    try:
        return moves_from_tags(tags)
    except ValueError as exc:
        raise RegistryError(f"a champion move tag of model {name!r} is unreadable: {exc}") from exc


def _read_history(client: MlflowClient, name: str) -> list[str]:
    tags = _model_tags(client, name)
    raw = tags.get(HISTORY_TAG)
    legacy: list[str] = []
    if raw:
        try:
            legacy = [str(version) for version in json.loads(raw)]
        except (json.JSONDecodeError, TypeError) as exc:
            raise RegistryError(f"tag {HISTORY_TAG} of model {name!r} is not a JSON list: {raw!r}") from exc
    return rollback_stack(_read_moves(client, name, tags), legacy)


def _record_move(client: MlflowClient, name: str, move: ChampionMove) -> None:
    key, value = move.tag()
    client.set_registered_model_tag(name, key, value)


def _move(version: str, previous: str | None, kind: MoveKind, by: str, reason: str) -> ChampionMove:
    return ChampionMove(version, previous, datetime.now(UTC), kind, by, reason, seen_by=by)


def observe_champion(settings: Settings, seen_by: str, announce: Callable[[ChampionMove], None]) -> ChampionMove | None:
    """Record a move of `@champion` made outside the stack, and `announce` the champion once; the move announced.

    Called by the webhook receiver and the poll (`seen_by`). The `champion_rollout` tag names the version
    whose rollout was started (announced here, or rolled out by a flow itself, `mark_rolled_out`); it is
    set only after `announce` returned, so an announcement that fails is made again by the next call.
    The first champion ever seen is the baseline, not announced. Serialised with promotions and rollbacks.
    """
    name = settings.model_name
    client = tracking(settings)
    with _promotion_lock(settings), _mlflow_errors(settings, f"observe @{CHAMPION} of {name!r}"):
        current = _alias_version(client, name, CHAMPION)
        tags = _model_tags(client, name)
        moves = _read_moves(client, name, tags)
        unrecorded = unrecorded_move(current, moves, datetime.now(UTC), seen_by)
        if unrecorded is not None:
            _record_move(client, name, unrecorded)
            moves.append(unrecorded)
            logger.warning("@%s of %s moved outside the stack to version %s", CHAMPION, name, current)
        announced = tags.get(ROLLOUT_TAG)
        if current is None or announced == current:
            return None
        if announced is not None:
            announce(moves[-1])
        client.set_registered_model_tag(name, ROLLOUT_TAG, current)
        return moves[-1] if announced is not None else None


def mark_rolled_out(settings: Settings, version: str) -> None:
    """Record that the rollout of `version` started, so the watcher does not announce it again."""
    client = tracking(settings)
    with _mlflow_errors(settings, f"record the rollout of {settings.model_name!r} version {version}"):
        client.set_registered_model_tag(settings.model_name, ROLLOUT_TAG, str(version))


@contextlib.contextmanager
def _promotion_lock(settings: Settings, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Exclusive lock serialising champion moves of this state dir (processes and threads alike)."""
    path = settings.mlflow_dir / "promotion.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"another promotion or rollback has held {path} for over {timeout:.0f}s; try again later"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _log_run_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    timestamp = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[mlflow.entities.Metric(key, value, timestamp, 0) for key, value in metrics.items()]
    )


def promote(settings: Settings, version: str, decision: Decision) -> bool:
    """Record `decision` on `version` ("3" or "@alias"); if it says promote, move `@champion` to it. True if moved.

    The decision's numbers go on the version as tags (`Decision.to_tags`) and on its run as
    `gate_*` metrics (`Decision.to_metrics`).

    Refused (False, reason recorded in `promotion_outcome` / `promotion_refusal`) when the champion is
    no longer the one the decision compared with, or `version` already is the champion.
    """
    name = settings.model_name
    client = tracking(settings)
    with _promotion_lock(settings), _mlflow_errors(settings, f"promote {name!r} version {version}"):
        record = _resolve(client, name, str(version))  # fails clearly on an unknown version
        version = str(record.version)
        tags = decision.to_tags() | {"promotion_decided_at": _now()}
        if record.run_id:  # the numbers as run metrics too: plotted and compared across runs in the MLflow UI
            _log_run_metrics(client, record.run_id, decision.to_metrics())
        current = _alias_version(client, name, CHAMPION)

        def refuse(outcome: str, reason: str) -> bool:
            logger.warning("not promoting %s version %s: %s", name, version, reason)
            _set_version_tags(client, name, version, tags | {"promotion_outcome": outcome, "promotion_refusal": reason})
            return False

        if not decision.promote:
            _set_version_tags(client, name, version, tags | {"promotion_outcome": "rejected"})
            return False
        stale = _stale_reason(decision, current, version)
        if stale:
            return refuse("refused", stale)
        # Compare-and-set: the champion must still be the one decided against right before the move.
        now = _alias_version(client, name, CHAMPION)
        if now != current:
            return refuse("refused", _changed(decision.champion_version, now))
        client.set_registered_model_alias(name, CHAMPION, version)
        after = _alias_version(client, name, CHAMPION)
        if after != version:
            return refuse("lost_race", f"another promotion moved @{CHAMPION} to version {after} at the same time")
        # Recorded after the move: a crash in between leaves an unrecorded move, which the watcher records
        # as made outside the stack (with the right previous champion, so rollbacks still work).
        _record_move(client, name, _move(version, current, "promotion", "gate (train-model)", decision.summary()))
        _set_version_tags(client, name, version, tags | {"promotion_outcome": "promoted", "promoted_at": _now()})
    logger.info("promoted %s version %s to @%s (previous: %s)", name, version, CHAMPION, current)
    return True


def _stale_reason(decision: Decision, current: str | None, version: str) -> str | None:
    if decision.champion is not None and decision.champion_version is None:
        return "the decision does not name the champion version it was compared with"
    if current != decision.champion_version:
        return _changed(decision.champion_version, current)
    if current == version:
        return f"version {version} already is @{CHAMPION}"
    return None


def _changed(decided: str | None, current: str | None) -> str:
    def label(version: str | None) -> str:
        return f"version {version}" if version else "no champion"

    return (
        f"@{CHAMPION} changed since the decision: it was made against {label(decided)}, the champion now is "
        f"{label(current)}; re-evaluate the challenger against the current champion"
    )


def rollback(settings: Settings, reason: str) -> Rollback:
    """Move `@champion` back to the previous champion, recording why on both versions."""
    if not reason or not reason.strip():
        raise RegistryError("a rollback needs a reason (it is recorded on both versions)")
    name = settings.model_name
    client = tracking(settings)
    with _promotion_lock(settings), _mlflow_errors(settings, f"roll back {name!r}"):
        current = _alias_version(client, name, CHAMPION)
        history = _read_history(client, name)
        target = plan_rollback(history, current)
        if target is None:
            raise NoPreviousChampionError(
                f"model {name!r} has no previous champion to roll back to "
                f"(current champion: {('version ' + current) if current else 'none'}); nothing was changed"
            )
        _resolve(client, name, target)
        if _alias_version(client, name, CHAMPION) != current:
            raise RegistryError(f"@{CHAMPION} of {name!r} moved during the rollback; nothing was changed, try again")
        at = _now()
        # Record first, alias second: a crash in between leaves a record of `target` while the alias is
        # still `current`; the watcher then records the alias's "move" back to `current` from `target`,
        # which leaves the rollback stack as it was before this rollback.
        _record_move(client, name, _move(target, current, "rollback", "mlstack model rollback", reason))
        client.set_registered_model_alias(name, CHAMPION, target)
        record = {"from": current, "to": target, "reason": reason, "at": at}
        client.set_registered_model_tag(name, LAST_ROLLBACK_TAG, json.dumps(record))
        if current is not None:
            _set_version_tags(
                client, name, current, {"rolled_back_at": at, "rollback_reason": reason, "rolled_back_to": target}
            )
        _set_version_tags(
            client, name, target, {"restored_at": at, "restore_reason": reason, "restored_from": current or "none"}
        )
    logger.warning("rolled back %s @%s from %s to %s: %s", name, CHAMPION, current, target, reason)
    return Rollback(current, target)


def describe(settings: Settings, ref: str) -> dict[str, str]:
    """Version, aliases, run, status, every version tag (lineage, decisions) and the run's metrics, as strings."""
    client = tracking(settings)
    name = settings.model_name
    with _mlflow_errors(settings, f"describe {name!r} {ref}"):
        version = _resolve(client, name, ref)
        info = {
            "name": name,
            "version": str(version.version),
            "aliases": ",".join(sorted(f"@{alias}" for alias in version.aliases)) or "-",
            "run_id": version.run_id or "-",
            "status": str(version.status),
            "source": version.source or "-",
            "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        }
        info.update({key: str(value) for key, value in sorted(version.tags.items())})
        if version.run_id:
            metrics = client.get_run(version.run_id).data.metrics
            # A tag and a run metric can share a name (the gate's `gate_*` numbers): the tag keeps its exact text.
            info.update({key: _format_metric(value) for key, value in sorted(metrics.items()) if key not in info})
    return info


def _format_metric(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def download_reference_profile(settings: Settings, ref: str, directory: Path) -> Path:
    """Download the training reference profile of version `ref` into `directory`; returns the file."""
    client = tracking(settings)
    name = settings.model_name
    with _mlflow_errors(settings, f"download the reference profile of {name!r} {ref}"):
        version = _resolve(client, name, ref)
        uri = version.tags.get("reference_profile_uri")
        if not uri:
            raise RegistryError(f"model {name!r} version {version.version} has no reference_profile_uri tag")
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(directory)))


def log_drift(
    settings: Settings, version: str, metrics: dict[str, float], tags: dict[str, str], artifacts: list[Path]
) -> str:
    """Log one monitoring run (scores, verdict, charts) against model `version`; tags the version; returns the run id.

    Runs go to the experiment `<mlflow_experiment>-monitoring`, tagged with the model name and version,
    so the UI lists a version's drift history; the version gets `last_drift_*` tags.
    """
    return log_monitoring_run(settings, "drift", version, metrics, tags, artifacts)


def log_monitoring_run(
    settings: Settings,
    kind: str,
    version: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path],
) -> str:
    """Log one monitoring run of `kind` ("drift", "shadow") against model `version`; returns the run id.

    The run goes to the experiment `<mlflow_experiment>-monitoring`, named `<kind>-v<version>-<time>`
    and tagged with the model name and version; the version gets `last_<kind>_*` tags.
    """
    client = tracking(settings)
    name = settings.model_name
    monitoring = settings.model_copy(update={"mlflow_experiment": f"{settings.mlflow_experiment}-monitoring"})
    with _mlflow_errors(settings, f"log {kind} results for {name!r} version {version}"):
        experiment_id = _experiment_id(client, monitoring)
        run_tags = {"mlstack.model_name": name, "mlstack.model_version": str(version), **tags}
        run = client.create_run(experiment_id, tags=run_tags, run_name=f"{kind}-v{version}-{_now()}")
        try:
            timestamp = int(time.time() * 1000)
            client.log_batch(
                run.info.run_id,
                metrics=[mlflow.entities.Metric(key, float(value), timestamp, 0) for key, value in metrics.items()],
            )
            for path in artifacts:
                client.log_artifact(run.info.run_id, str(path))
        except Exception:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id)
        _set_version_tags(
            client,
            name,
            str(version),
            {f"last_{kind}_{key}": value for key, value in tags.items()} | {f"last_{kind}_run_id": run.info.run_id},
        )
        return run.info.run_id
